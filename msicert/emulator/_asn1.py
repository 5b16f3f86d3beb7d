"""A minimal DER reader: just enough to inspect a PKCS#10 request byte for byte.

cryptography parses CSRs but hides the details the contract pins down (the attribute's string
tag, the exact RSASSA-PSS parameters, the raw to-be-signed bytes), so those are read here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DerError", "Tlv", "children", "oid_text", "read_one", "uint"]

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclass(frozen=True)
class Tlv:
    """One decoded element: its tag byte, its value bytes and its complete encoding."""

    tag: int
    value: bytes
    raw: bytes


def _read(data: bytes, pos: int) -> tuple[Tlv, int]:
    if pos + 2 > len(data):
        raise DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used here")
    first = data[pos + 1]
    pos_len = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise DerError("indefinite or oversized length")
        body = data[pos_len : pos_len + count]
        if len(body) != count or body[0] == 0:
            raise DerError("truncated or non-minimal length")
        length = int.from_bytes(body, "big")
        if length < 0x80:
            raise DerError("non-minimal length")
        pos_len += count
    end = pos_len + length
    if end > len(data):
        raise DerError("element runs past the end of its container")
    return Tlv(tag, data[pos_len:end], data[pos:end]), end


def read_one(data: bytes, tag: int | None = None) -> Tlv:
    """Decode ``data`` as exactly one element (optionally of the given tag)."""
    element, end = _read(data, 0)
    if end != len(data):
        raise DerError("trailing bytes after the element")
    if tag is not None and element.tag != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{element.tag:02x}")
    return element


def children(element: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, in encoding order."""
    if not element.tag & 0x20:
        raise DerError(f"tag 0x{element.tag:02x} is not constructed")
    out: list[Tlv] = []
    pos = 0
    while pos < len(element.value):
        child, pos = _read(element.value, pos)
        out.append(child)
    return out


def oid_text(element: Tlv) -> str:
    """Dotted text of an OBJECT IDENTIFIER element."""
    if element.tag != OID or not element.value:
        raise DerError("expected an OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in element.value:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if element.value[-1] & 0x80:
        raise DerError("truncated OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def uint(element: Tlv) -> int:
    """Value of a non-negative INTEGER element."""
    if element.tag != INTEGER or not element.value or element.value[0] & 0x80:
        raise DerError("expected a non-negative INTEGER")
    return int.from_bytes(element.value, "big")
