"""The few DER encodings the CSR needs (X.690), so one byte-exact builder serves every key.

cryptography can only sign a CSR with a key it holds; a CNG/KeyGuard key signs bytes through
NCryptSignHash. Building the to-be-signed bytes here keeps Linux and Windows on one contract.
"""

from __future__ import annotations

__all__ = [
    "bit_string",
    "context",
    "der_len",
    "ia5_string",
    "integer",
    "is_printable",
    "null",
    "oid",
    "printable_string",
    "sequence",
    "set_of",
    "tlv",
    "utf8_string",
]


def der_len(n: int) -> bytes:
    """Encode a DER length."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One tag-length-value element."""
    return bytes((tag,)) + der_len(len(value)) + value


def integer(value: int) -> bytes:
    """INTEGER (non-negative values only: versions, salt lengths, RSA numbers)."""
    if value < 0:
        raise ValueError("only non-negative integers are encoded here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(0x02, body)


def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(0x06, bytes(out))


def null() -> bytes:
    """NULL."""
    return b"\x05\x00"


# X.680 section 41.4: the whole PrintableString alphabet.
_PRINTABLE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)


def utf8_string(text: str) -> bytes:
    """UTF8String."""
    return tlv(0x0C, text.encode("utf-8"))


def is_printable(text: str) -> bool:
    """True when every character of ``text`` is in the PrintableString alphabet."""
    return all(ch in _PRINTABLE for ch in text)


def printable_string(text: str) -> bytes:
    """PrintableString; ValueError for a character outside its alphabet (never re-encoded)."""
    if not is_printable(text):
        raise ValueError(f"{text!r} has characters a PrintableString cannot hold")
    return tlv(0x13, text.encode("ascii"))


def ia5_string(text: str) -> bytes:
    """IA5String; ValueError for a non-ASCII character (never re-encoded)."""
    if not text.isascii():
        raise ValueError(f"{text!r} has non-ASCII characters an IA5String cannot hold")
    return tlv(0x16, text.encode("ascii"))


def bit_string(data: bytes) -> bytes:
    """BIT STRING with no unused bits."""
    return tlv(0x03, b"\x00" + data)


def sequence(*items: bytes) -> bytes:
    """SEQUENCE of already-encoded items."""
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """SET OF, members sorted by their encoding as DER requires."""
    return tlv(0x31, b"".join(sorted(items)))


def context(number: int, value: bytes, *, constructed: bool = True) -> bytes:
    """Context-specific tag [number] around ``value`` (EXPLICIT when constructed)."""
    return tlv((0xA0 if constructed else 0x80) | number, value)
