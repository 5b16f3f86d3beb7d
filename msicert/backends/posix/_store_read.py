"""The store's read path: one entry file read, checked and turned into a BindingCertificate.

An entry is metadata lines, then the private key, then the certificate (see
:mod:`._store_write`). Reading it checks the header, the one certificate block and the one key
block, then either the quick path (:func:`_quick_entry`: the names compared with those recorded
at mint time as DER bytes, the key matched with the certificate by its modulus and exponent
read from the PKCS#8 DER) or the thorough one (cryptography's parsers, :func:`_check_key`).
Both accept exactly the same entries, with the same result. Two per-process memos, keyed by a
digest of the bytes, let an unchanged file skip the parse (``_parsed``) or the checks
(``_verified``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat
import threading

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa  # loaded with x509 anyway

from ... import _fork, _policy
from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._model import BindingCertificate, x5t_s256
from ..._secret import Secret
from ..contract import CorruptEntry
from ._fs import O_BINARY, POSIX, fchmod, foreign_owner, open_nofollow

__all__ = ["MAGIC", "MAX_ENTRY_BYTES", "as_secret", "load_entry", "parse_entry", "x5t_at"]

log = LazyLogger("msicert")

MAX_ENTRY_BYTES = 64 * 1024  # a real entry is ~3.5 KiB; anything larger is not ours
MAGIC = "msicert-entry: 1"
_META = ("identity", "client_id", "tenant_id", "mtls_endpoint", "identity_type")
# Recorded at mint time (base64 of the DER names): the entry is identified by them, so a
# subject form that IMDS chooses can never make it look corrupt. Files written before these
# lines existed lack them and are checked by the subject rules instead.
_NAMES = ("subject", "issuer")
_CERT_BEGIN, _CERT_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
_KEY_BEGIN, _KEY_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"

# (SHA-256 of the file bytes, identity, issuer CN) whose subject/issuer and key/certificate
# checks passed in this process
_verified: set[tuple[bytes, str, str]] = set()
_verified_lock = threading.Lock()


@_fork.in_child
def _fresh_memo_lock() -> None:
    global _verified_lock
    _verified_lock = threading.Lock()


# (SHA-256 of the file bytes, identity, issuer CN, path) -> the entry they parse to (bounded)
_parsed: dict[tuple[bytes, Identity, str, str], BindingCertificate] = {}
_PARSED_MAX = 64


def _issuer_key(issuer_cn: str | None) -> str:
    # None (the issuer recorded at mint) and every spelling of an expected issuer differ.
    return "\0recorded" if issuer_cn is None else issuer_cn.lower()


def as_secret(value: Secret[bytes] | bytes) -> Secret[bytes]:
    """``value`` in a Secret (as it is when it already is one)."""
    return value if isinstance(value, Secret) else Secret(value)


def load_entry(
    path: str, identity: Identity, issuer_cn: str | None
) -> BindingCertificate | None:
    """The entry in ``path`` (None when there is none); never runs RSA key validation.

    Refuses (CorruptEntry) a symlink, a non-regular file or one owned by another user, and
    takes group/other bits off the file's mode.
    """
    try:
        fd = open_nofollow(path, os.O_RDONLY | O_BINARY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptEntry("entry is a symlink", location=path) from exc
        raise StoreError(f"cannot open store entry {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptEntry("entry is not a regular file", location=path)
        if foreign_owner(st):
            raise CorruptEntry(f"entry is {foreign_owner(st)}", location=path)
        if POSIX and stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("store entry %s had mode %04o; removing group/other permissions",
                        path, stat.S_IMODE(st.st_mode))
            fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)  # only ever take bits away
        data = Secret(os.read(fd, MAX_ENTRY_BYTES + 1))  # holds the private key
    except CorruptEntry:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read store entry {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    # Content-addressed: the same bytes always parse to the same (immutable) entry, so a
    # new client reading an unchanged file skips the parse. Any change to the file misses.
    # Keyed by a digest, so these process-wide memos never hold private-key bytes.
    digest = hashlib.sha256(data.reveal()).digest()
    key = (digest, identity, _issuer_key(issuer_cn), path)
    hit = _parsed.get(key)
    if hit is not None:
        return hit
    entry = parse_entry(data, identity, issuer_cn, path, digest=digest, thorough=False)
    with _verified_lock:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[key] = entry
    return entry


def parse_entry(
    data: Secret[bytes] | bytes, identity: Identity, issuer_cn: str | None, location: str,
    *, digest: bytes | None, thorough: bool,
) -> BindingCertificate:
    """Parse and check one entry's bytes; CorruptEntry says why it cannot be used.

    ``digest`` is SHA-256 of ``data`` when the caller has it already. An entry that records
    its names is first checked on the quick path (:func:`_quick_entry`); ``thorough`` (a
    write) skips it. Whatever the quick path does not accept goes through cryptography's
    parsers, which decide exactly as before.

    The bytes hold the private key: they stay in a Secret (plain bytes are wrapped at once)
    and only the certificate block is ever sliced out as plain bytes (the key's modulus and
    exponent are read in :func:`_rsa_public_numbers`, which empties its locals on return).
    """
    data = as_secret(data)
    if not data:
        raise CorruptEntry("empty file", location=location)
    if len(data) > MAX_ENTRY_BYTES:
        raise CorruptEntry(f"larger than {MAX_ENTRY_BYTES} bytes", location=location)
    meta = _header(_head(data), location)
    cert_block = _block(data, _CERT_BEGIN, _CERT_END, "certificate", location)
    key_span = _span(data, _KEY_BEGIN, _KEY_END, "private key", location)
    if cert_block is None:
        raise CorruptEntry("no certificate", location=location)
    if key_span is None:
        raise CorruptEntry("certificate without private key", location=location)
    key_block = Secret(data.reveal()[key_span[0] : key_span[1]])
    try:
        der = binascii.a2b_base64(cert_block[len(_CERT_BEGIN) : -len(_CERT_END)])
    except binascii.Error as exc:
        raise CorruptEntry("unparsable certificate", location=location) from exc
    # Subject/issuer and key/cert checks depend only on these bytes: once per process.
    # Keyed by a digest, so the memo never holds private-key bytes.
    marker = (
        digest if digest is not None else hashlib.sha256(data.reveal()).digest(),
        identity.alias, _issuer_key(issuer_cn),
    )
    checked = marker in _verified
    if not thorough:
        quick = _quick_entry(der, cert_block, key_block, meta, identity, issuer_cn,
                             location, checked=checked)
        if quick is not None:
            if not checked:
                with _verified_lock:
                    _verified.add(marker)
            return quick
    try:
        cert = _policy.load_certificate(der)  # every lazily parsed part, checked now
    except ValueError as exc:
        raise CorruptEntry("unparsable certificate", location=location) from exc
    if meta.get("identity") != identity.alias:
        raise CorruptEntry("entry belongs to another identity", location=location)
    entry = _entry(der, cert, cert_block, meta, identity, location)
    if not checked:
        vetted = _recorded_names_match(cert, meta, location)
        # An older file is held to the subject rules it was written under (CN a GUID),
        # never to more: what loaded before keeps loading. Without an expected issuer,
        # the one recorded at mint is the expectation; a file that records none is held
        # to the default issuer.
        expected = issuer_cn if issuer_cn is not None or vetted else \
            _policy.DEFAULT_ISSUER_CN
        why = _policy.identity_mismatch(
            cert, identity, issuer_cn=expected, subject_vetted=vetted
        )
        if why:
            raise CorruptEntry.refusing(why, location=location)
        _check_key(entry, key_block, location)
        with _verified_lock:
            _verified.add(marker)
    return entry


def x5t_at(path: str) -> str | None:
    """Thumbprint of the certificate currently in ``path`` (None if absent or unreadable)."""
    try:
        with open(path, "rb", opener=open_nofollow) as f:
            data = Secret(f.read(MAX_ENTRY_BYTES + 1))
        block = _block(data, _CERT_BEGIN, _CERT_END, "certificate", path)
        if block is None:
            return None
        return x5t_s256(binascii.a2b_base64(block[len(_CERT_BEGIN) : -len(_CERT_END)]))
    except (OSError, ValueError, binascii.Error):
        return None


# --- the blocks ------------------------------------------------------------------------------
def _span(
    data: Secret[bytes], begin: bytes, end: bytes, what: str, where: str
) -> tuple[int, int] | None:
    """Where the one ``begin``...``end`` block of ``data`` lies (None when there is none).

    Offsets, not bytes: the caller slices, and wraps a key block in a Secret at once.
    """
    start = data.reveal().find(begin)
    if start < 0:
        return None
    if data.reveal().find(begin, start + 1) >= 0:
        raise CorruptEntry(f"more than one {what}", location=where)
    stop = data.reveal().find(end, start)
    if stop < 0:
        raise CorruptEntry(f"truncated {what}", location=where)
    return start, stop + len(end)


def _block(data: Secret[bytes], begin: bytes, end: bytes, what: str, where: str) -> bytes | None:
    """The one public (certificate) block of ``data``; see :func:`_span`."""
    span = _span(data, begin, end, what, where)
    return None if span is None else data.reveal()[span[0] : span[1]]


def _head(data: Secret[bytes]) -> bytes:
    """The metadata lines: everything before the first PEM block (so never the key)."""
    end = data.reveal().find(b"-----BEGIN")
    return data.reveal()[: end if end >= 0 else len(data)]


def _header(data: bytes, location: str) -> dict[str, str]:
    end = data.find(b"-----BEGIN")
    try:
        lines = data[: end if end >= 0 else len(data)].decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CorruptEntry("header is not UTF-8", location=location) from exc
    if not lines or lines[0].strip() != MAGIC:
        raise CorruptEntry("not an msicert entry (missing header)", location=location)
    meta: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            meta[name.strip()] = value.strip()
    missing = [m for m in _META if not meta.get(m)]
    if missing:
        raise CorruptEntry(f"missing metadata {', '.join(missing)}", location=location)
    return meta


def _entry(
    der: bytes, cert: x509.Certificate, cert_block: bytes, meta: dict[str, str],
    identity: Identity, location: str,
) -> BindingCertificate:
    return BindingCertificate.from_der(
        der, cert, identity=identity, client_id=meta["client_id"],
        tenant_id=meta["tenant_id"], mtls_endpoint=meta["mtls_endpoint"],
        identity_type=meta["identity_type"], source="store", key="file",
        store=location, cert_pem=cert_block,
    )


# --- the quick path --------------------------------------------------------------------------
def _quick_entry(
    der: bytes, cert_block: bytes, key_block: Secret[bytes], meta: dict[str, str],
    identity: Identity, issuer_cn: str | None, location: str, *, checked: bool,
) -> BindingCertificate | None:
    """The entry, when the cheap checks vouch for it; None sends it the thorough way.

    ``checked``: these exact bytes passed every check in this process already, so only
    the certificate is loaded. Otherwise the names are compared with those recorded at
    mint time as DER bytes and read with :func:`_policy.name_values` (no ``Name``
    objects, no RFC 4514 strings), and the key is matched with the certificate by its
    modulus and exponent read from the PKCS#8 DER (no RSA key object, no validation).
    Only what the thorough path accepts is accepted here, with the same result.
    """
    if meta.get("identity") != identity.alias:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        if checked:
            return _entry(der, cert, cert_block, meta, identity, location)
        recorded_subject, recorded_issuer = meta.get("subject"), meta.get("issuer")
        names = _tbs_names(der)
        if names is None or recorded_subject is None or recorded_issuer is None:
            return None
        issuer_der, subject_der = names
        if (binascii.b2a_base64(subject_der, newline=False) != recorded_subject.encode()
                or binascii.b2a_base64(issuer_der, newline=False)
                != recorded_issuer.encode()):
            return None
        subject, issuer = _policy.name_values(subject_der), _policy.name_values(issuer_der)
        if subject is None or issuer is None or _policy.vetted_names_mismatch(
                subject, issuer, identity, issuer_cn=issuer_cn) is not None:
            return None
        public = _rsa_public_numbers(key_block)
        cert_key = cert.public_key()
        if public is None or not isinstance(cert_key, rsa.RSAPublicKey):
            return None
        numbers = cert_key.public_numbers()
        if (numbers.n, numbers.e) != public:
            return None
        return _entry(der, cert, cert_block, meta, identity, location)
    except _policy.CERT_ERRORS:
        return None


_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")  # rsaEncryption, NULL


def _tbs_names(der: bytes) -> tuple[bytes, bytes] | None:
    """(issuer, subject) DER of a certificate that cryptography has loaded (None if odd)."""
    element = _policy.der_element
    try:
        _, pos, end = element(der, 0, len(der))  # Certificate
        _, pos, end = element(der, pos, end)  # TBSCertificate
        tag, _, stop = element(der, pos, end)
        if tag == 0xA0:  # [0] EXPLICIT version
            tag, _, stop = element(der, stop, end)  # serial number
        _, _, issuer_at = element(der, stop, end)  # signature algorithm
        tag, _, validity_at = element(der, issuer_at, end)
        _, _, subject_at = element(der, validity_at, end)
        s_tag, _, stop = element(der, subject_at, end)
        if tag != 0x30 or s_tag != 0x30:
            return None
        return der[issuer_at:validity_at], der[subject_at:stop]
    except ValueError:
        return None


def _rsa_public_numbers(key_block: Secret[bytes]) -> tuple[int, int] | None:
    """(n, e) of the PEM PKCS#8 RSA key exactly as msicert writes it, else None.

    Reads what cryptography's loader reads, more strictly (canonical base64 in 64-character
    lines, DER, two-prime RSA, every number positive), and checks no RSA arithmetic either:
    anything it returns None for goes to cryptography's loader, which decides as before.
    The decoded key lives in locals of this frame only, emptied before it is left.
    """
    body = text = der = b""
    try:
        body = key_block.reveal()[len(_KEY_BEGIN) : -len(_KEY_END)]
        text = body.replace(b"\n", b"")
        lines = -(-len(text) // 64)
        # one newline before each 64-character line and one after the last, and no others
        stride = body[::65]
        if (not text or len(body) != len(text) + lines + 1 or body[-1:] != b"\n"
                or stride != b"\n" * len(stride)):
            return None
        der = binascii.a2b_base64(text)
        if binascii.b2a_base64(der, newline=False) != text:  # canonical base64 only
            return None
        end = len(der)
        tag, pos, stop = _policy.der_element(der, 0, end)  # PrivateKeyInfo
        if tag != 0x30 or stop != end or der[pos : pos + 3] != b"\x02\x01\x00":
            return None
        pos += 3
        if der[pos : pos + len(_RSA_ALGORITHM)] != _RSA_ALGORITHM:
            return None
        tag, pos, stop = _policy.der_element(der, pos + len(_RSA_ALGORITHM), end)
        if tag != 0x04 or stop != end:  # no attributes, no public key field
            return None
        tag, pos, stop = _policy.der_element(der, pos, end)  # RSAPrivateKey
        if tag != 0x30 or stop != end or der[pos : pos + 3] != b"\x02\x01\x00":
            return None
        numbers: list[int] = []
        pos += 3
        for _ in range(8):  # n, e, d, p, q, d mod (p-1), d mod (q-1), q^-1 mod p
            # INTEGER, definite minimal length (< 64 KiB), positive, minimally encoded;
            # inline: this loop is most of the cost of a first lookup's key check
            if der[pos] != 0x02:
                return None
            size = der[pos + 1]
            if size < 0x80:
                pos += 2
            elif size == 0x81 and der[pos + 2] >= 0x80:
                size, pos = der[pos + 2], pos + 3
            elif size == 0x82 and der[pos + 2]:
                size, pos = (der[pos + 2] << 8) | der[pos + 3], pos + 4
            else:
                return None
            first = der[pos]
            if not size or first >= 0x80 or (first == 0 and (size == 1 or der[pos + 1] < 0x80)):
                return None
            if len(numbers) < 2:
                numbers.append(int.from_bytes(der[pos : pos + size], "big"))
            pos += size
        if pos != end:
            return None
        return numbers[0], numbers[1]
    except (ValueError, IndexError, binascii.Error):
        return None
    finally:  # a traceback keeps this frame: leave it with its locals emptied
        body = text = der = b""



# --- the thorough path -----------------------------------------------------------------------
def _recorded_names_match(cert: x509.Certificate, meta: dict[str, str], where: str) -> bool:
    """True when the entry records its names (and they match); False for an older file."""
    recorded = [meta.get(name) for name in _NAMES]
    if not any(recorded):
        return False
    actual = (cert.subject.public_bytes(), cert.issuer.public_bytes())
    for name, value, der in zip(_NAMES, recorded, actual, strict=True):
        try:
            ok = value is not None and base64.b64decode(value, validate=True) == der
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise CorruptEntry(f"{name} differs from the one recorded at mint time",
                               location=where)
    return True


def _check_key(entry: BindingCertificate, key_block: Secret[bytes], location: str) -> None:
    """Key/cert match: the public halves compared, without RSA key validation (~28 ms)."""
    # Imported here: the module pulls in cryptography's SSH support (~8 ms), which a warm
    # process whose entry passes the quick check never needs.
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            key_block.reveal(), None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CorruptEntry("unparsable private key", location=location) from exc
    cert_key = entry.certificate.public_key()
    if not (
        isinstance(key, rsa.RSAPrivateKey)
        and isinstance(cert_key, rsa.RSAPublicKey)
        and key.public_key().public_numbers() == cert_key.public_numbers()
    ):
        raise CorruptEntry("private key does not match the certificate", location=location)
