"""ctypes mirrors of the cdef structs: fixed-width fields only, pointers as ``c_void_p``.

``ctypes.wintypes`` is not used for fields on purpose: its LONG/ULONG are 8 bytes on Linux,
so the layout tests (which run on Linux and compare with cffi) would not see Windows x64.
"""

from __future__ import annotations

from ctypes import Structure, c_int32, c_uint32
from ctypes import c_void_p as _ptr
from typing import Final


class CRYPTOAPI_BLOB(Structure):
    _fields_ = (("cbData", c_uint32), ("pbData", _ptr))


class FILETIME(Structure):
    _fields_ = (("dwLowDateTime", c_uint32), ("dwHighDateTime", c_uint32))


class CRYPT_ALGORITHM_IDENTIFIER(Structure):
    _fields_ = (("pszObjId", _ptr), ("Parameters", CRYPTOAPI_BLOB))


class CRYPT_BIT_BLOB(Structure):
    _fields_ = (("cbData", c_uint32), ("pbData", _ptr), ("cUnusedBits", c_uint32))


class CERT_PUBLIC_KEY_INFO(Structure):
    _fields_ = (("Algorithm", CRYPT_ALGORITHM_IDENTIFIER), ("PublicKey", CRYPT_BIT_BLOB))


class CERT_EXTENSION(Structure):
    _fields_ = (("pszObjId", _ptr), ("fCritical", c_int32), ("Value", CRYPTOAPI_BLOB))


class CERT_INFO(Structure):
    _fields_ = (
        ("dwVersion", c_uint32),
        ("SerialNumber", CRYPTOAPI_BLOB),
        ("SignatureAlgorithm", CRYPT_ALGORITHM_IDENTIFIER),
        ("Issuer", CRYPTOAPI_BLOB),
        ("NotBefore", FILETIME),
        ("NotAfter", FILETIME),
        ("Subject", CRYPTOAPI_BLOB),
        ("SubjectPublicKeyInfo", CERT_PUBLIC_KEY_INFO),
        ("IssuerUniqueId", CRYPT_BIT_BLOB),
        ("SubjectUniqueId", CRYPT_BIT_BLOB),
        ("cExtension", c_uint32),
        ("rgExtension", _ptr),
    )


class CERT_CONTEXT(Structure):
    _fields_ = (
        ("dwCertEncodingType", c_uint32),
        ("pbCertEncoded", _ptr),
        ("cbCertEncoded", c_uint32),
        ("pCertInfo", _ptr),
        ("hCertStore", _ptr),
    )


class CRYPT_KEY_PROV_PARAM(Structure):
    _fields_ = (
        ("dwParam", c_uint32),
        ("pbData", _ptr),
        ("cbData", c_uint32),
        ("dwFlags", c_uint32),
    )


class CRYPT_KEY_PROV_INFO(Structure):
    _fields_ = (
        ("pwszContainerName", _ptr),
        ("pwszProvName", _ptr),
        ("dwProvType", c_uint32),
        ("dwFlags", c_uint32),
        ("cProvParam", c_uint32),
        ("rgProvParam", _ptr),
        ("dwKeySpec", c_uint32),
    )


class BCRYPT_PKCS1_PADDING_INFO(Structure):
    _fields_ = (("pszAlgId", _ptr),)


class BCRYPT_PSS_PADDING_INFO(Structure):
    _fields_ = (("pszAlgId", _ptr), ("cbSalt", c_uint32))


class BCRYPT_RSAKEY_BLOB(Structure):
    _fields_ = tuple(
        (name, c_uint32)
        for name in ("Magic", "BitLength", "cbPublicExp", "cbModulus", "cbPrime1", "cbPrime2")
    )


class SECURITY_ATTRIBUTES(Structure):
    _fields_ = (("nLength", c_uint32), ("lpSecurityDescriptor", _ptr), ("bInheritHandle", c_int32))


# Checked against the cffi layout (tests/native/test_layout_python.py).
STRUCTURES: Final[dict[str, type[Structure]]] = {
    cls.__name__: cls
    for cls in (
        CERT_CONTEXT,
        CERT_INFO,
        CERT_EXTENSION,
        CERT_PUBLIC_KEY_INFO,
        CRYPT_BIT_BLOB,
        CRYPT_ALGORITHM_IDENTIFIER,
        FILETIME,
        CRYPT_KEY_PROV_PARAM,
        CRYPT_KEY_PROV_INFO,
        BCRYPT_PKCS1_PADDING_INFO,
        BCRYPT_PSS_PADDING_INFO,
        BCRYPT_RSAKEY_BLOB,
        SECURITY_ATTRIBUTES,
    )
} | {"CRYPT_DATA_BLOB": CRYPTOAPI_BLOB}
