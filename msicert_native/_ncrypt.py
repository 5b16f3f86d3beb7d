"""CNG keys (ncrypt): create/open/list persisted RSA keys, sign, export the public key.

Key policy (imds-v2 section 7): RSA-2048, export policy 0 (never exportable); the caller picks
the usage (all, or signing only), whether an existing key of the name is overwritten
(NCRYPT_OVERWRITE_KEY_FLAG) and, for KeyGuard, NCRYPT_USE_VIRTUAL_ISOLATION_FLAG |
NCRYPT_USE_PER_BOOT_KEY_FLAG. Choosing KeyGuard vs software and falling back is the caller's
policy (msicert.backends.windows); this module only does what it is told and reports failures.
"""

from __future__ import annotations

import struct

from . import _constants as C
from ._backend import impl as _impl
from ._errors import NativeError
from ._handles import NCryptKey, NCryptProvider

__all__ = [
    "create_rsa_key",
    "delete_key",
    "enum_key_names",
    "export_public_spki",
    "get_export_policy",
    "is_virtual_iso",
    "key_last_modified",
    "open_key",
    "open_provider",
    "rsa_public_blob_to_spki",
    "sign_pkcs1_sha256",
    "sign_pss_sha256",
]

KEYGUARD_FLAGS = C.NCRYPT_USE_VIRTUAL_ISOLATION_FLAG | C.NCRYPT_USE_PER_BOOT_KEY_FLAG
# Statuses meaning "this key has no such property" (software KSP keys lack "Virtual Iso");
# Wine answers NTE_INVALID_PARAMETER for a property name it does not know.
_NO_PROPERTY = (C.NTE_NOT_SUPPORTED, C.NTE_NOT_FOUND, C.NTE_INVALID_PARAMETER)


def _dword(value: int) -> bytes:
    return struct.pack("<I", value)


def open_provider(name: str = C.MS_KEY_STORAGE_PROVIDER) -> NCryptProvider:
    """Open a key storage provider (default: the software KSP); use it in a ``with``."""
    return NCryptProvider(_impl.ncrypt_open_storage_provider(name, 0), name)


def create_rsa_key(
    provider: NCryptProvider,
    name: str,
    *,
    keyguard: bool,
    machine: bool = False,
    bits: int = 2048,
    overwrite: bool = True,
    usage: int = C.NCRYPT_ALLOW_ALL_USAGES,
) -> NCryptKey:
    """Create, configure and finalize a persisted, non-exportable RSA key named ``name``.

    With ``overwrite`` an existing key of that name is replaced; without it the provider
    refuses (NTE_EXISTS). ``usage`` is the NCRYPT_KEY_USAGE_PROPERTY (all usages, or
    NCRYPT_ALLOW_SIGNING_FLAG). With ``keyguard`` the creation asks for VBS isolation and a
    per-boot key; where VBS is missing the creation (or finalize) fails with the provider's
    status (e.g. 0x80890014) and nothing is left behind.
    """
    flags = C.NCRYPT_OVERWRITE_KEY_FLAG if overwrite else 0
    if keyguard:
        flags |= KEYGUARD_FLAGS
    if machine:
        flags |= C.NCRYPT_MACHINE_KEY_FLAG
    handle = _impl.ncrypt_create_persisted_key(
        provider.handle, C.NCRYPT_RSA_ALGORITHM, name, 0, flags
    )
    key = NCryptKey(handle, name, provider.name, machine)
    try:
        _impl.ncrypt_set_property(handle, C.NCRYPT_LENGTH_PROPERTY, _dword(bits), 0)
        _impl.ncrypt_set_property(
            handle, C.NCRYPT_EXPORT_POLICY_PROPERTY, _dword(0), C.NCRYPT_PERSIST_FLAG
        )
        _impl.ncrypt_set_property(
            handle,
            C.NCRYPT_KEY_USAGE_PROPERTY,
            _dword(usage),
            C.NCRYPT_PERSIST_FLAG,
        )
        _impl.ncrypt_finalize_key(handle, 0)
    except BaseException:
        key.close()  # not finalized: nothing was persisted
        raise
    return key


def open_key(provider: NCryptProvider, name: str, *, machine: bool = False) -> NCryptKey:
    """Open the persisted key ``name`` (NTE_BAD_KEYSET when it does not exist)."""
    flags = C.NCRYPT_SILENT_FLAG | (C.NCRYPT_MACHINE_KEY_FLAG if machine else 0)
    handle = _impl.ncrypt_open_key(provider.handle, name, 0, flags)
    return NCryptKey(handle, name, provider.name, machine)


def is_virtual_iso(key: NCryptKey) -> bool:
    """True iff the key's "Virtual Iso" property exists and is non-zero (KeyGuard)."""
    try:
        _, data = _impl.ncrypt_get_property(key.handle, C.NCRYPT_VIRTUAL_ISO_PROPERTY, 4, 0)
    except NativeError as exc:
        if exc.status in _NO_PROPERTY:
            return False
        raise
    return any(data)


def key_last_modified(key: NCryptKey) -> float | None:
    """When the persisted key was last written (NCRYPT_LAST_MODIFIED_PROPERTY, a FILETIME), as
    seconds since the Unix epoch; None when the provider does not say."""
    try:
        _, data = _impl.ncrypt_get_property(key.handle, C.NCRYPT_LAST_MODIFIED_PROPERTY, 8, 0)
    except NativeError as exc:
        if exc.status in _NO_PROPERTY:
            return None
        raise
    if len(data) != 8:
        return None
    ticks = int.from_bytes(data, "little")  # 100 ns since 1601-01-01
    return ticks / 10_000_000 - 11_644_473_600


def enum_key_names(provider: NCryptProvider, *, machine: bool = False) -> list[str]:
    """The names of the persisted keys of ``provider`` (the user's, or the machine's)."""
    flags = C.NCRYPT_SILENT_FLAG | (C.NCRYPT_MACHINE_KEY_FLAG if machine else 0)
    return _impl.ncrypt_enum_key_names(provider.handle, flags)


def get_export_policy(key: NCryptKey) -> int:
    """The key's NCRYPT_EXPORT_POLICY_PROPERTY (0 = not exportable)."""
    _, data = _impl.ncrypt_get_property(key.handle, C.NCRYPT_EXPORT_POLICY_PROPERTY, 4, 0)
    return int.from_bytes(data[:4].ljust(4, b"\0"), "little")


def _sign(key: NCryptKey, padding_flag: int, digest: bytes, salt: int) -> bytes:
    if len(digest) != 32:
        raise ValueError(f"a SHA-256 digest is 32 bytes, not {len(digest)}")
    if not key.signature_size:
        key.signature_size, _ = _impl.ncrypt_sign_hash(
            key.handle, padding_flag, C.BCRYPT_SHA256_ALGORITHM, salt, digest, 0
        )
    _, signature = _impl.ncrypt_sign_hash(
        key.handle, padding_flag, C.BCRYPT_SHA256_ALGORITHM, salt, digest, key.signature_size
    )
    return signature


def sign_pss_sha256(key: NCryptKey, digest: bytes, salt: int = 32) -> bytes:
    """RSASSA-PSS signature (SHA-256, MGF1-SHA-256, ``salt`` bytes) over a SHA-256 digest."""
    return _sign(key, C.NCRYPT_PAD_PSS_FLAG, digest, salt)


def sign_pkcs1_sha256(key: NCryptKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 signature over a SHA-256 digest."""
    return _sign(key, C.NCRYPT_PAD_PKCS1_FLAG, digest, 0)


def export_public_spki(key: NCryptKey) -> bytes:
    """The public key as SubjectPublicKeyInfo DER (from BCRYPT_RSAPUBLIC_BLOB)."""
    size, _ = _impl.ncrypt_export_key(key.handle, C.BCRYPT_RSAPUBLIC_BLOB, 0)
    _, blob = _impl.ncrypt_export_key(key.handle, C.BCRYPT_RSAPUBLIC_BLOB, size)
    return rsa_public_blob_to_spki(blob)


def delete_key(key: NCryptKey) -> None:
    """Delete the persisted key; the handle is consumed (closed) on success."""
    _impl.ncrypt_delete_key(key.handle, 0)
    key._consumed()


# ---- BCRYPT_RSAPUBLIC_BLOB -> SubjectPublicKeyInfo (pure Python, tiny DER writer) ----------

_RSA_ENCRYPTION_ALGID = bytes.fromhex("300d06092a864886f70d0101010500")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_uint(value: bytes) -> bytes:
    value = value.lstrip(b"\0") or b"\0"
    return _der(0x02, b"\0" + value if value[0] & 0x80 else value)


def rsa_public_blob_to_spki(blob: bytes) -> bytes:
    """Convert a BCRYPT_RSAKEY_BLOB (public) to SubjectPublicKeyInfo DER."""
    if len(blob) < 24:
        raise ValueError("BCRYPT_RSAPUBLIC_BLOB too short")
    magic, _bits, exp_len, mod_len, _p1, _p2 = struct.unpack_from("<6I", blob)
    if magic != C.BCRYPT_RSAPUBLIC_MAGIC or len(blob) < 24 + exp_len + mod_len:
        raise ValueError("not a BCRYPT_RSAPUBLIC_BLOB")
    exponent = blob[24 : 24 + exp_len]
    modulus = blob[24 + exp_len : 24 + exp_len + mod_len]
    rsa_public_key = _der(0x30, _der_uint(modulus) + _der_uint(exponent))
    return _der(0x30, _RSA_ENCRYPTION_ALGID + _der(0x03, b"\0" + rsa_public_key))
