"""The Windows backend: ``CurrentUser|LocalMachine\\My``, NCrypt keys, a named mutex, WinHTTP.

``_cert_store`` (the certificate store, MSAL.NET's FriendlyName tags), ``_ncrypt_key``
(KeyGuard and software-KSP keys), ``_mutex`` (the per-user named mutex), ``_winhttp_transport``
(mTLS over WinHTTP with the store's key) and ``_attestation`` (MAA tokens for KeyGuard keys).
The only package that imports ``msicert_native``, and only inside functions: every module
imports on Linux and its calls raise a clear error there. May import the core,
:mod:`msicert.wire` and :mod:`msicert.backends.contract`; never :mod:`msicert.backends.posix`.
"""
