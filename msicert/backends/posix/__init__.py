"""The portable backend: the default off Windows, and on Windows when ``store_dir`` is given.

``_file_store`` (PEM files under ``~/.config/msal/certs``, and each identity's shared token
cache beside its entry) reads an entry through ``_store_read`` (the header, the PEM blocks, the
quick path and the thorough one) and writes every file through ``_store_write`` (temp file,
fsync, rename); both use ``_fs`` (owner and mode checks, no-follow opens). ``_software_key``
(an exportable RSA key), ``_flock`` (``flock`` / ``msvcrt.locking`` single-flight lock),
``_ssl_transport`` (``ssl`` contexts and urllib3 pools per certificate) and ``_trust`` (the
extra CA bundle).
May import the core, :mod:`msicert.wire` and :mod:`msicert.backends.contract`; never
``msicert_native`` nor :mod:`msicert.backends.windows`.
"""
