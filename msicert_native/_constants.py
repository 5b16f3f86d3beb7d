"""Win32 constants used by msicert_native, one ``Final`` per name, each with its header.

Integer values mirror the ``#define`` lines of ``cdefs/*.cdef`` (a test keeps them equal) and
are checked against the mingw-w64 headers by ``tests/native/test_static_layout.py``. String
constants (provider, algorithm, property and blob names) are the ``L"..."`` values of the
same headers. Status codes are stored unsigned (``0x8009....``); NCrypt returns them as a
signed SECURITY_STATUS, which ``_errors`` masks with ``0xFFFFFFFF`` before comparing.
"""

from __future__ import annotations

from typing import Final

# ---- wincrypt.h ----
X509_ASN_ENCODING: Final = 0x00000001  # wincrypt.h
PKCS_7_ASN_ENCODING: Final = 0x00010000  # wincrypt.h
CERT_STORE_PROV_SYSTEM_W: Final = 10  # wincrypt.h ((LPCSTR) 10: an integer passed as char *)
CERT_SYSTEM_STORE_CURRENT_USER: Final = 0x00010000  # wincrypt.h
CERT_SYSTEM_STORE_LOCAL_MACHINE: Final = 0x00020000  # wincrypt.h
CERT_STORE_OPEN_EXISTING_FLAG: Final = 0x00004000  # wincrypt.h
CERT_STORE_CREATE_NEW_FLAG: Final = 0x00002000  # wincrypt.h
CERT_STORE_READONLY_FLAG: Final = 0x00008000  # wincrypt.h
CERT_STORE_MAXIMUM_ALLOWED_FLAG: Final = 0x00001000  # wincrypt.h
CERT_STORE_CTRL_COMMIT: Final = 3  # wincrypt.h
CERT_STORE_CTRL_COMMIT_FORCE_FLAG: Final = 0x1  # wincrypt.h
CERT_STORE_ADD_NEW: Final = 1  # wincrypt.h
CERT_STORE_ADD_USE_EXISTING: Final = 2  # wincrypt.h
CERT_STORE_ADD_REPLACE_EXISTING: Final = 3  # wincrypt.h
CERT_STORE_ADD_ALWAYS: Final = 4  # wincrypt.h
CERT_FIND_ANY: Final = 0  # wincrypt.h
CERT_FIND_SUBJECT_STR_W: Final = 0x00080007  # wincrypt.h
CERT_FIND_ISSUER_STR_W: Final = 0x00080004  # wincrypt.h
CERT_FIND_SHA1_HASH: Final = 0x00010000  # wincrypt.h
CERT_KEY_PROV_INFO_PROP_ID: Final = 2  # wincrypt.h
CERT_SHA1_HASH_PROP_ID: Final = 3  # wincrypt.h
CERT_FRIENDLY_NAME_PROP_ID: Final = 11  # wincrypt.h
AT_KEYEXCHANGE: Final = 1  # wincrypt.h
AT_SIGNATURE: Final = 2  # wincrypt.h
CERT_NCRYPT_KEY_SPEC: Final = 0xFFFFFFFF  # wincrypt.h (CRYPT_KEY_PROV_INFO of a CNG key)
CRYPTPROTECT_UI_FORBIDDEN: Final = 0x1  # dpapi.h (never show a DPAPI prompt)
CRYPT_E_NOT_FOUND: Final = 0x80092004  # winerror.h
CRYPT_E_EXISTS: Final = 0x80092005  # winerror.h
ERROR_MORE_DATA: Final = 234  # winerror.h
ERROR_FILE_NOT_FOUND: Final = 2  # winerror.h
ERROR_NO_MORE_FILES: Final = 18  # winerror.h
ERROR_ACCESS_DENIED: Final = 5  # winerror.h
# ---- ncrypt.h ----
NCRYPT_SILENT_FLAG: Final = 0x00000040  # ncrypt.h
NCRYPT_MACHINE_KEY_FLAG: Final = 0x00000020  # ncrypt.h
NCRYPT_OVERWRITE_KEY_FLAG: Final = 0x00000080  # ncrypt.h
NCRYPT_USE_VIRTUAL_ISOLATION_FLAG: Final = 0x00020000  # ncrypt.h (Windows SDK; not in mingw-w64)
NCRYPT_USE_PER_BOOT_KEY_FLAG: Final = 0x00040000  # ncrypt.h (Windows SDK; not in mingw-w64)
NCRYPT_PERSIST_FLAG: Final = 0x80000000  # ncrypt.h
NCRYPT_PERSIST_ONLY_FLAG: Final = 0x40000000  # ncrypt.h
NCRYPT_ALLOW_EXPORT_FLAG: Final = 0x00000001  # ncrypt.h
NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG: Final = 0x00000002  # ncrypt.h
NCRYPT_ALLOW_DECRYPT_FLAG: Final = 0x00000001  # ncrypt.h
NCRYPT_ALLOW_SIGNING_FLAG: Final = 0x00000002  # ncrypt.h
NCRYPT_ALLOW_ALL_USAGES: Final = 0x00FFFFFF  # ncrypt.h
NCRYPT_PAD_PKCS1_FLAG: Final = 0x00000002  # ncrypt.h
NCRYPT_PAD_PSS_FLAG: Final = 0x00000008  # ncrypt.h
BCRYPT_PAD_PKCS1: Final = 0x00000002  # bcrypt.h
BCRYPT_PAD_PSS: Final = 0x00000008  # bcrypt.h
BCRYPT_RSAPUBLIC_MAGIC: Final = 0x31415352  # bcrypt.h
NTE_BAD_KEYSET: Final = 0x80090016  # winerror.h
NTE_EXISTS: Final = 0x8009000F  # winerror.h
NTE_BAD_FLAGS: Final = 0x80090009  # winerror.h
NTE_NOT_SUPPORTED: Final = 0x80090029  # winerror.h
NTE_INVALID_PARAMETER: Final = 0x80090027  # winerror.h
NTE_BUFFER_TOO_SMALL: Final = 0x80090028  # winerror.h
NTE_NOT_FOUND: Final = 0x80090011  # winerror.h
NTE_PERM: Final = 0x80090010  # winerror.h
NTE_INTERNAL_ERROR: Final = 0x8009002D  # winerror.h
NTE_NO_MORE_ITEMS: Final = 0x8009002A  # winerror.h
# ---- winhttp.h ----
WINHTTP_ACCESS_TYPE_DEFAULT_PROXY: Final = 0  # winhttp.h
WINHTTP_ACCESS_TYPE_NO_PROXY: Final = 1  # winhttp.h
WINHTTP_FLAG_SECURE: Final = 0x00800000  # winhttp.h
INTERNET_DEFAULT_HTTPS_PORT: Final = 443  # winhttp.h
INTERNET_DEFAULT_HTTP_PORT: Final = 80  # winhttp.h
WINHTTP_OPTION_SECURITY_FLAGS: Final = 31  # winhttp.h
WINHTTP_OPTION_CLIENT_CERT_CONTEXT: Final = 47  # winhttp.h
WINHTTP_OPTION_REDIRECT_POLICY: Final = 88  # winhttp.h
WINHTTP_OPTION_DISABLE_FEATURE: Final = 63  # winhttp.h
WINHTTP_DISABLE_KEEP_ALIVE: Final = 0x00000008  # winhttp.h
WINHTTP_OPTION_REDIRECT_POLICY_NEVER: Final = 0  # winhttp.h
SECURITY_FLAG_IGNORE_UNKNOWN_CA: Final = 0x00000100  # winhttp.h
SECURITY_FLAG_IGNORE_CERT_WRONG_USAGE: Final = 0x00000200  # winhttp.h
SECURITY_FLAG_IGNORE_CERT_CN_INVALID: Final = 0x00001000  # winhttp.h
SECURITY_FLAG_IGNORE_CERT_DATE_INVALID: Final = 0x00002000  # winhttp.h
WINHTTP_QUERY_STATUS_CODE: Final = 19  # winhttp.h
WINHTTP_QUERY_RAW_HEADERS_CRLF: Final = 22  # winhttp.h
WINHTTP_QUERY_FLAG_NUMBER: Final = 0x20000000  # winhttp.h
ERROR_WINHTTP_TIMEOUT: Final = 12002  # winhttp.h
ERROR_WINHTTP_CANNOT_CONNECT: Final = 12029  # winhttp.h
ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED: Final = 12044  # winhttp.h
ERROR_WINHTTP_SECURE_FAILURE: Final = 12175  # winhttp.h
ERROR_WINHTTP_HEADER_NOT_FOUND: Final = 12150  # winhttp.h
ERROR_INSUFFICIENT_BUFFER: Final = 122  # winerror.h
# ---- winbase.h ----
WAIT_OBJECT_0: Final = 0x00000000  # winbase.h
WAIT_ABANDONED: Final = 0x00000080  # winbase.h
WAIT_TIMEOUT: Final = 0x00000102  # winbase.h
WAIT_FAILED: Final = 0xFFFFFFFF  # winbase.h
INFINITE: Final = 0xFFFFFFFF  # winbase.h
ERROR_ALREADY_EXISTS: Final = 183  # winerror.h
ERROR_NOT_OWNER: Final = 288  # winerror.h
# ---- winnt.h (advapi32.cdef) ----
TOKEN_QUERY: Final = 0x0008  # winnt.h
TokenUser: Final = 1  # winnt.h TOKEN_INFORMATION_CLASS enumerator (its own spelling)


# ---- string constants (wide strings in the headers) ----
MS_KEY_STORAGE_PROVIDER: Final = "Microsoft Software Key Storage Provider"  # ncrypt.h
MS_PLATFORM_KEY_STORAGE_PROVIDER: Final = "Microsoft Platform Crypto Provider"  # ncrypt.h
NCRYPT_RSA_ALGORITHM: Final = "RSA"  # ncrypt.h
NCRYPT_LENGTH_PROPERTY: Final = "Length"  # ncrypt.h
NCRYPT_EXPORT_POLICY_PROPERTY: Final = "Export Policy"  # ncrypt.h
NCRYPT_KEY_USAGE_PROPERTY: Final = "Key Usage"  # ncrypt.h
NCRYPT_NAME_PROPERTY: Final = "Name"  # ncrypt.h
NCRYPT_UNIQUE_NAME_PROPERTY: Final = "Unique Name"  # ncrypt.h
NCRYPT_ALGORITHM_GROUP_PROPERTY: Final = "Algorithm Group"  # ncrypt.h
NCRYPT_LAST_MODIFIED_PROPERTY: Final = "Modified"  # ncrypt.h (FILETIME of a persisted key)
BCRYPT_RSAPUBLIC_BLOB: Final = "RSAPUBLICBLOB"  # bcrypt.h
BCRYPT_SHA256_ALGORITHM: Final = "SHA256"  # bcrypt.h
# KeyGuard marker: present and non-zero iff the key is VBS-isolated; mingw-w64 has no macro.
NCRYPT_VIRTUAL_ISO_PROPERTY: Final = "Virtual Iso"  # ncrypt.h property name (KeyGuard)
