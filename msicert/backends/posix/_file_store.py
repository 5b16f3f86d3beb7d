"""POSIX store: one PEM file per identity under ~/.config/msal/certs (dir 0700, files 0600).

A file holds metadata lines, then the private key, then the certificate, so the key and the
certificate can never diverge. OpenSSL and cryptography ignore the text before the PEM blocks.
Writes go to a temp file that is fsynced and renamed over the entry, so a crash at any instant
leaves the old entry or the new one, never a torn file.

:class:`FileStore` owns the directory, the names of the files in it, the locks, the notes and
the shared token cache; reading an entry is :mod:`._store_read` (the quick path and the
thorough one), writing any file is :mod:`._store_write`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from typing import TYPE_CHECKING

from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._model import BindingCertificate
from ..._secret import Secret
from ..contract import MAX_TOKEN_CACHE_BYTES, NewEntry
from . import _store_read, _store_write
from ._flock import IdentityLock
from ._fs import POSIX, foreign_owner, read_private

if TYPE_CHECKING:
    from ._software_key import SoftwareKey
    from ._ssl_transport import TlsCache

__all__ = ["FileStore", "default_directory"]

log = LazyLogger("msicert")

_MAX_NOTE = 4096
_TOKEN_LOCKS = 8  # ESTS requests of different scopes hash to 8 lock files per identity

# token cache path -> (its lstat identity, the bytes read and checked): a new client re-reading
# an unchanged cache costs one lstat. Every write renames a new inode, and any change in place
# (content, mode, owner) moves mtime or ctime, so a changed file never matches.
_token_reads: dict[str, tuple[tuple[int, int, int, int, int], bytes]] = {}
_TOKEN_READS_MAX = 16


def default_directory() -> str:
    """``$XDG_CONFIG_HOME/msal/certs`` or ``~/.config/msal/certs``.

    A relative ``XDG_CONFIG_HOME`` is ignored with a warning: the XDG Base Directory spec says
    such a value is invalid, and honouring it would put the store wherever the process happens
    to run. A ``HOME`` that is set but empty or relative is a StoreError naming it (an unset
    one falls back to the password database).
    """
    base = os.environ.get("XDG_CONFIG_HOME")
    if base and not os.path.isabs(base):
        log.warning("ignoring XDG_CONFIG_HOME=%r: not an absolute path (the XDG Base Directory "
                    "spec says to ignore it); using ~/.config", base)
        base = None
    if not base:
        # An empty HOME is no home: expanduser would make it "/" (a store at /.config).
        given = os.environ.get("HOME") if POSIX else None
        home = os.path.expanduser("~") if given is None else given
        if not os.path.isabs(home):
            raise StoreError(f"cannot place the default store: the home directory {home!r} "
                             "(HOME) is not an absolute path; set HOME, or give store_dir= "
                             "(--store-dir, $MSICERT_STORE_DIR)")
        base = os.path.join(home, ".config")
    return os.path.join(base, "msal", "certs")


class FileStore:
    """The Linux/macOS store; safe for concurrent use by threads and processes."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = os.path.abspath(directory or default_directory())
        self.description = self.directory
        self._dir_checked = False
        self._dir_id: tuple[int, int] | None = None  # (st_dev, st_ino) of what was checked

    # --- directory -----------------------------------------------------------------------
    def ensure_directory(self) -> None:
        """Create the directory 0700, or refuse/tighten an existing one. Idempotent.

        The read path calls this: once checked, it costs nothing. Every write and every lock
        checks again (:meth:`_recheck_directory`), so a directory removed or replaced under a
        long-lived client is recreated or refused there.
        """
        if self._dir_checked:
            return
        self._recheck_directory()

    def _recheck_directory(self) -> None:
        """The full check, whatever was checked before: recreate a missing directory 0700,
        refuse a symlink, a non-directory, another user's directory or one whose owner lacks
        rwx, and take group/other bits off one that has them."""
        try:
            self._ensure_directory()
        except OSError as exc:
            raise StoreError(f"cannot use store directory {self.directory}: {exc}") from exc

    def _ensure_directory(self) -> None:
        path = self.directory
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if self._dir_checked:
                log.info("store directory %s disappeared; recreating it", path)
            parent = os.path.dirname(path)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"refusing store directory {path}: it is a symlink")
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"refusing store directory {path}: not a directory")
        if foreign_owner(st):
            raise StoreError(f"refusing store directory {path}: {foreign_owner(st)}")
        mode = stat.S_IMODE(st.st_mode)
        if POSIX and mode & 0o700 != 0o700:
            # Adding bits would override a choice someone made on purpose (a read-only store);
            # msicert only ever takes permissions away.
            raise StoreError(
                f"refusing store directory {path}: mode {mode:04o} denies its owner "
                f"read, write or search; msicert never widens a mode (chmod 700 {path})"
            )
        if POSIX and mode & 0o077:
            log.warning("store directory %s had mode %04o; removing group/other permissions "
                        "(tightening to 0700)", path, mode)
            os.chmod(path, mode & 0o700)
        ident = (st.st_dev, st.st_ino)
        if self._dir_id is not None and ident != self._dir_id:
            log.info("store directory %s was replaced since it was last checked", path)
        self._dir_id = ident
        self._dir_checked = True

    def path_for(self, identity: Identity) -> str:
        """``msal_mtls.pem`` for the system identity, ``msal_mtls.<tag>.pem`` otherwise."""
        tag = identity.file_tag
        return os.path.join(self.directory, f"msal_mtls.{tag}.pem" if tag else "msal_mtls.pem")

    def lock(self, identity: Identity, *, timeout: float) -> IdentityLock:
        """The single-flight lock for ``identity``: a lock file beside the entry (never deleted,
        so two processes can never lock different inodes). The directory is checked again
        first: a mint always follows, and it must not fail on a directory removed meanwhile."""
        self._recheck_directory()
        return IdentityLock(self.path_for(identity)[: -len(".pem")] + ".lock", timeout=timeout)

    def _note_path(self, identity: Identity, name: str) -> str:
        if not name.isalnum():
            raise ValueError(f"note name {name!r} is not alphanumeric")
        return self.path_for(identity)[: -len(".pem")] + f".{name}"

    def read_note(self, identity: Identity, name: str) -> bytes | None:
        """The note file beside the lock (``msal_mtls[.<tag>].<name>``), if it is a small
        regular file of ours that nobody else can write."""
        return read_private(self._note_path(identity, name), _MAX_NOTE, 0o022)[0]

    def write_note(self, identity: Identity, name: str, data: bytes | None) -> bool:
        """Write (temp file, rename) or remove the note; True when done. An error is logged,
        never raised."""
        path = self._note_path(identity, name)
        try:
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return True
            _store_write.sweep(self.directory, path)
            _store_write.atomic_write(self.directory, path, Secret(data[:_MAX_NOTE]), sync=False)
            return True
        except (OSError, StoreError) as exc:
            log.debug("cannot write %s: %s", path, exc)
            return False

    # --- shared token cache ------------------------------------------------------------------
    def tokens_path(self, identity: Identity) -> str:
        """``msal_mtls[.<tag>].tokens``: the identity's shared token cache (0600)."""
        return self.path_for(identity)[: -len(".pem")] + ".tokens"

    def read_tokens(self, identity: Identity) -> bytes | None:
        """The token cache file, if it is a regular file of ours, mode 0600 or narrower, and
        no larger than MAX_TOKEN_CACHE_BYTES; anything else is ignored (a WARNING once)."""
        path = self.tokens_path(identity)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError:
            st = None  # read_private says why
        ident = None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                         st.st_ctime_ns)
        known = _token_reads.get(path)
        if known is not None and known[0] == ident:
            return known[1]
        data, why = read_private(path, MAX_TOKEN_CACHE_BYTES, 0o077)
        if why:
            log.warning_once(path, "ignoring shared token cache %s: %s; it is rebuilt at the "
                             "next token", path, why)
        if data is not None and ident is not None:
            if len(_token_reads) >= _TOKEN_READS_MAX:
                _token_reads.clear()
            _token_reads[path] = (ident, data)
        return data

    def write_tokens(self, identity: Identity, data: bytes | None) -> bool:
        """Atomically replace (temp file 0600, rename: a crash leaves the old or the new file)
        or remove the token cache; an error is logged once, never raised."""
        path = self.tokens_path(identity)
        try:
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                _store_write.sweep(self.directory, path)
                return True
            self._recheck_directory()
            _store_write.sweep(self.directory, path)
            _store_write.atomic_write(self.directory, path, Secret(data), sync=False)
            return True
        except (OSError, StoreError) as exc:
            log.warning_once(path, "cannot write shared token cache %s (%s); tokens stay in "
                             "this process", path, exc)
            return False

    def token_lock(self, identity: Identity, scope: str | None, *,
                   timeout: float) -> IdentityLock:
        """``msal_mtls[.<tag>].tokens-<n>.lock`` (one of 8, by the scope's hash) for a scope's
        ESTS requests; ``msal_mtls[.<tag>].tokens.lock`` for writes of the cache. Never
        deleted, like the identity's lock."""
        self._recheck_directory()
        base = self.path_for(identity)[: -len(".pem")] + ".tokens"
        if scope is None:
            return IdentityLock(base + ".lock", timeout=timeout,
                                waiting_for="another process writing the token cache")
        bucket = hashlib.sha256(scope.encode("utf-8")).digest()[0] % _TOKEN_LOCKS
        return IdentityLock(f"{base}-{bucket}.lock", timeout=timeout,
                            waiting_for="another process asking ESTS for the same token")

    def generate_key(self, identity: Identity) -> SoftwareKey:
        """RSA 2048 in memory; persisted only inside the 0600 entry file."""
        from ._software_key import SoftwareKey  # only minting needs key generation

        return SoftwareKey.generate()

    def transport(self) -> TlsCache:
        """mTLS through Python's ``ssl``, each context loaded from the entry file itself."""
        from ._ssl_transport import TlsCache

        return TlsCache()

    # --- read ------------------------------------------------------------------------------
    def find(self, identity: Identity, *, issuer_cn: str | None) -> BindingCertificate | None:
        """Load the identity's entry (never runs RSA key validation)."""
        self.ensure_directory()
        return _store_read.load_entry(self.path_for(identity), identity, issuer_cn)

    def parse(
        self, data: Secret[bytes] | bytes, identity: Identity, *, issuer_cn: str | None,
        location: str,
    ) -> BindingCertificate:
        """Parse and check one entry's bytes; CorruptEntry says why it cannot be used.

        The bytes hold the private key: they stay in a Secret (plain bytes are wrapped at once)
        and only the certificate block is ever sliced out as plain bytes.
        """
        return _store_read.parse_entry(data, identity, issuer_cn, location, digest=None,
                                       thorough=False)

    # --- write -----------------------------------------------------------------------------
    def put(
        self, identity: Identity, entry: NewEntry, *, issuer_cn: str | None
    ) -> BindingCertificate:
        """Atomically replace the identity's entry (call with the identity lock held)."""
        self._recheck_directory()
        data = _store_write.entry_bytes(identity, entry)
        path = self.path_for(identity)
        # Checked first, the thorough way (cryptography's parsers): a write is rare and slow.
        stored = _store_read.parse_entry(data, identity, issuer_cn, path, digest=None,
                                         thorough=True)
        _store_write.sweep(self.directory, path)
        _store_write.atomic_write(self.directory, path, data)
        return stored

    # --- remove ----------------------------------------------------------------------------
    def remove(self, identity: Identity, x5t_s256: str | None = None) -> bool:
        """Delete the entry (if ``x5t_s256`` is given, only while it still holds that cert)."""
        self._recheck_directory()
        path = self.path_for(identity)
        if x5t_s256 is not None and _store_read.x5t_at(path) != x5t_s256:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:  # e.g. a directory planted where the entry belongs
            raise StoreError(f"cannot remove store entry {path}: {exc}") from exc
        _store_write.fsync_dir(self.directory)
        return True

    def purge(self, identity: Identity) -> list[str]:
        """Remove the identity's entry, its stray temp files and its notes (a purge starts
        afresh: no back-off either); return the thumbprint of what went."""
        self._recheck_directory()
        path = self.path_for(identity)
        _store_write.sweep(self.directory, path)
        self.write_note(identity, "backoff", None)
        x5t = _store_read.x5t_at(path)
        return [x5t or "unreadable entry"] if self.remove(identity) else []
