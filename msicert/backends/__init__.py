"""Store backends behind one contract (:mod:`msicert.backends.contract`), chosen once per client.

``posix/`` holds the file store, the software key, the ``flock`` lock and the ``ssl`` transport;
``windows/`` holds the certificate store, the NCrypt (KeyGuard / software KSP) keys, the named
mutex and the WinHTTP transport, and is the only package that imports ``msicert_native``.
Backends import the core (errors, identity, model, policy, secret), :mod:`msicert.wire` and
the contract; never the client, the token cache, each other or this package's ``__init__``.
:func:`default_store` imports the chosen backend on first use, so ``import msicert`` stays
free of ``ssl``, urllib3 and ``msicert_native``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .._errors import StoreError
from .contract import Store

if TYPE_CHECKING:
    from .posix._file_store import FileStore

__all__ = ["ENV_STORE_DIR", "default_store"]

ENV_STORE_DIR = "MSICERT_STORE_DIR"
_FileStore: type[FileStore] | None = None


def default_store(store_dir: str | None = None, location: str | None = None) -> Store:
    """File store on POSIX (or wherever ``store_dir`` is given); on Windows the certificate
    store, ``location`` ``"current-user"`` (default) or ``"local-machine"``.
    ``$MSICERT_STORE_DIR`` stands in for ``store_dir`` when neither is given."""
    if store_dir is not None and not store_dir.strip():
        raise ValueError("store_dir is empty: give a directory, or leave it out for the default "
                         f"store (${ENV_STORE_DIR}, else ~/.config/msal/certs)")
    if store_dir is None and location is None:
        store_dir = os.environ.get(ENV_STORE_DIR) or None  # e.g. the emulator's own store
    if location is not None and store_dir is not None:
        raise ValueError("give store_dir= or store_location=, not both: a directory holds the "
                         "file store, a location names a Windows certificate store")
    if store_dir is None and (sys.platform == "win32" or location is not None):
        if sys.platform != "win32":
            raise StoreError(f"the {location} certificate store exists only on Windows")
        from .windows._cert_store import WindowsStore

        return WindowsStore(location or "current-user")
    return _file_store_class()(store_dir)


def _file_store_class() -> type[FileStore]:
    """The file store class, imported once (an import statement costs ~0.7 us a client)."""
    global _FileStore
    if _FileStore is None:
        from .posix._file_store import FileStore

        _FileStore = FileStore
    return _FileStore
