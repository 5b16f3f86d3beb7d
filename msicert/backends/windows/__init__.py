"""The Windows backend: ``CurrentUser|LocalMachine\\My``, NCrypt keys, a named mutex, WinHTTP.

``_cert_store`` (the certificate store shared with MSAL.NET and MSAL Go), ``_tags`` (their
FriendlyName tag and alias rules), ``_cleanup`` (the prune, the purge after a new key, the
sweep of old keys), ``_ncrypt_key`` (the shared binding key: KeyGuardRSAKey or HardwareRSAKey),
``_mutex`` (msicert's single-flight mutex and the references' store-write mutex),
``_winhttp_transport`` (mTLS over WinHTTP with the store's key), ``_attestation`` (MAA
tokens for KeyGuard keys) and ``_token_file`` (the shared token cache: a DPAPI blob under the
user's local application data, and its mutexes).
The only package that imports ``msicert_native``, and only inside functions: every module
imports on Linux and its calls raise a clear error there. May import the core,
:mod:`msicert.wire` and :mod:`msicert.backends.contract`; never :mod:`msicert.backends.posix`.
"""
