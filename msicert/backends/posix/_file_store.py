"""POSIX store: one PEM file per identity under ~/.config/msal/certs (dir 0700, files 0600).

A file holds metadata lines, then the private key, then the certificate, so the key and the
certificate can never diverge. OpenSSL and cryptography ignore the text before the PEM blocks.
Writes go to a temp file that is fsynced and renamed over the entry, so a crash at any instant
leaves the old entry or the new one, never a torn file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import stat
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa  # loaded with x509 anyway

from ... import _fork, _policy
from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._model import BindingCertificate, x5t_s256
from ..._secret import Secret
from ..contract import MAX_TOKEN_CACHE_BYTES, CorruptEntry, NewEntry
from ._flock import IdentityLock

if TYPE_CHECKING:
    from ._software_key import SoftwareKey
    from ._ssl_transport import TlsCache

__all__ = ["MAX_ENTRY_BYTES", "FileStore", "default_directory"]

log = LazyLogger("msicert")

MAX_ENTRY_BYTES = 64 * 1024  # a real entry is ~3.5 KiB; anything larger is not ours
_MAX_NOTE = 4096
_TOKEN_LOCKS = 8  # ESTS requests of different scopes hash to 8 lock files per identity
MAGIC = "msicert-entry: 1"
_META = ("identity", "client_id", "tenant_id", "mtls_endpoint", "identity_type")
# Recorded at mint time (base64 of the DER names): the entry is identified by them, so a
# subject form that IMDS chooses can never make it look corrupt. Files written before these
# lines existed lack them and are checked by the subject rules instead.
_NAMES = ("subject", "issuer")
_CERT_BEGIN, _CERT_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
_KEY_BEGIN, _KEY_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"
_POSIX = sys.platform != "win32"  # owner and mode bits; on Windows the profile's ACLs protect it
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: never let the C runtime translate newlines
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO planted as the entry must not hang

if sys.platform == "win32":

    def _foreign_owner(st: os.stat_result) -> str:
        return ""  # ownership is an ACL matter on Windows (the user profile protects it)

    def _fchmod(fd: int, mode: int) -> None:
        pass

else:

    def _foreign_owner(st: os.stat_result) -> str:
        """Why ``st`` is not ours ("" when it is)."""
        if st.st_uid == os.geteuid():
            return ""
        return f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"

    def _fchmod(fd: int, mode: int) -> None:
        os.fchmod(fd, mode)


def _no_crash(phase: str) -> None:
    """Crash-test seam: tests replace it in a child process to die at ``phase``."""


_crash_point = _no_crash


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)


def _read_private(path: str, limit: int, forbidden: int) -> tuple[bytes | None, str]:
    """``(bytes, "")`` of a regular file of ours of at most ``limit`` bytes whose mode has none
    of the ``forbidden`` bits; else ``(None, why)`` (``why`` empty when there is no file)."""
    try:
        fd = _nofollow(path, os.O_RDONLY | _O_BINARY)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or "unreadable"
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if _foreign_owner(st):
            return None, _foreign_owner(st)
        if _POSIX and mode & forbidden:
            return None, f"mode {mode:04o} opens it to other users"
        if st.st_size > limit:
            return None, f"larger than {limit} bytes"
        data = os.read(fd, limit + 1)
        while len(data) < st.st_size:  # a short read (rare for a regular file)
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            return None, f"larger than {limit} bytes"
        return data, ""
    except OSError as exc:
        return None, exc.strerror or "unreadable"
    finally:
        os.close(fd)


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
# token cache path -> (its lstat identity, the bytes read and checked): a new client re-reading
# an unchanged cache costs one lstat. Every write renames a new inode, and any change in place
# (content, mode, owner) moves mtime or ctime, so a changed file never matches.
_token_reads: dict[str, tuple[tuple[int, int, int, int, int], bytes]] = {}
_TOKEN_READS_MAX = 16


def _issuer_key(issuer_cn: str | None) -> str:
    # None (the issuer recorded at mint) and every spelling of an expected issuer differ.
    return "\0recorded" if issuer_cn is None else issuer_cn.lower()


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
        given = os.environ.get("HOME") if _POSIX else None
        home = os.path.expanduser("~") if given is None else given
        if not os.path.isabs(home):
            raise StoreError(f"cannot place the default store: the home directory {home!r} "
                             "(HOME) is not an absolute path; set HOME, or give store_dir= "
                             "(--store-dir, $MSICERT_STORE_DIR)")
        base = os.path.join(home, ".config")
    return os.path.join(base, "msal", "certs")


def _as_secret(value: Secret[bytes] | bytes) -> Secret[bytes]:
    return value if isinstance(value, Secret) else Secret(value)


def _write_range(fd: int, data: Secret[bytes], start: int, stop: int) -> None:
    # The bytes are revealed inside the call expression only: no local of this frame ever
    # refers to them, so a traceback that captures locals shows the Secret, not the key.
    while start < stop:
        start += os.write(fd, memoryview(data.reveal())[start:stop])


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


def _record_names(der: bytes) -> dict[str, str]:
    """The ``subject``/``issuer`` metadata lines for a certificate about to be stored."""
    try:
        cert = _policy.load_certificate(der)
    except ValueError:
        return {}  # put refuses it a moment later, with its own message
    return {
        "subject": base64.b64encode(cert.subject.public_bytes()).decode("ascii"),
        "issuer": base64.b64encode(cert.issuer.public_bytes()).decode("ascii"),
    }


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
        if _foreign_owner(st):
            raise StoreError(f"refusing store directory {path}: {_foreign_owner(st)}")
        mode = stat.S_IMODE(st.st_mode)
        if _POSIX and mode & 0o700 != 0o700:
            # Adding bits would override a choice someone made on purpose (a read-only store);
            # msicert only ever takes permissions away.
            raise StoreError(
                f"refusing store directory {path}: mode {mode:04o} denies its owner "
                f"read, write or search; msicert never widens a mode (chmod 700 {path})"
            )
        if _POSIX and mode & 0o077:
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
        return _read_private(self._note_path(identity, name), _MAX_NOTE, 0o022)[0]

    def write_note(self, identity: Identity, name: str, data: bytes | None) -> None:
        """Write (temp file, rename) or remove the note; an error is logged, never raised."""
        path = self._note_path(identity, name)
        try:
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            self._sweep(path)
            self._atomic_write(path, Secret(data[:_MAX_NOTE]), sync=False)
        except (OSError, StoreError) as exc:
            log.debug("cannot write %s: %s", path, exc)

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
            st = None  # _read_private says why
        ident = None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                         st.st_ctime_ns)
        known = _token_reads.get(path)
        if known is not None and known[0] == ident:
            return known[1]
        data, why = _read_private(path, MAX_TOKEN_CACHE_BYTES, 0o077)
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
                self._sweep(path)
                return True
            self._recheck_directory()
            self._sweep(path)
            self._atomic_write(path, Secret(data), sync=False)
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
        path = self.path_for(identity)
        try:
            fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
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
            if _foreign_owner(st):
                raise CorruptEntry(f"entry is {_foreign_owner(st)}", location=path)
            if _POSIX and stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("store entry %s had mode %04o; removing group/other permissions",
                            path, stat.S_IMODE(st.st_mode))
                _fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)  # only ever take bits away
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
        entry = self._parse(data, identity, issuer_cn, path, digest=digest, thorough=False)
        with _verified_lock:
            if len(_parsed) >= _PARSED_MAX:
                _parsed.clear()
            _parsed[key] = entry
        return entry

    def parse(
        self, data: Secret[bytes] | bytes, identity: Identity, *, issuer_cn: str | None,
        location: str,
    ) -> BindingCertificate:
        """Parse and check one entry's bytes; CorruptEntry says why it cannot be used.

        The bytes hold the private key: they stay in a Secret (plain bytes are wrapped at once)
        and only the certificate block is ever sliced out as plain bytes (the key's modulus and
        exponent are read in :func:`_rsa_public_numbers`, which empties its locals on return).
        """
        return self._parse(data, identity, issuer_cn, location, digest=None, thorough=False)

    def _parse(
        self, data: Secret[bytes] | bytes, identity: Identity, issuer_cn: str | None, location: str,
        *, digest: bytes | None, thorough: bool,
    ) -> BindingCertificate:
        """:meth:`parse`; ``digest`` is SHA-256 of ``data`` when the caller has it already.

        An entry that records its names is first checked on the quick path
        (:meth:`_quick_entry`); ``thorough`` (a write) skips it. Whatever the quick path does
        not accept goes through cryptography's parsers, which decide exactly as before.
        """
        data = _as_secret(data)
        if not data:
            raise CorruptEntry("empty file", location=location)
        if len(data) > MAX_ENTRY_BYTES:
            raise CorruptEntry(f"larger than {MAX_ENTRY_BYTES} bytes", location=location)
        meta = self._header(_head(data), location)
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
            quick = self._quick_entry(der, cert_block, key_block, meta, identity, issuer_cn,
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
        entry = self._entry(der, cert, cert_block, meta, identity, location)
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
            self._check_key(entry, key_block, location)
            with _verified_lock:
                _verified.add(marker)
        return entry

    @staticmethod
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

    def _quick_entry(
        self, der: bytes, cert_block: bytes, key_block: Secret[bytes], meta: dict[str, str],
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
                return self._entry(der, cert, cert_block, meta, identity, location)
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
            return self._entry(der, cert, cert_block, meta, identity, location)
        except _policy.CERT_ERRORS:
            return None

    @staticmethod
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

    @staticmethod
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

    # --- write -----------------------------------------------------------------------------
    def put(
        self, identity: Identity, entry: NewEntry, *, issuer_cn: str | None
    ) -> BindingCertificate:
        """Atomically replace the identity's entry (call with the identity lock held)."""
        self._recheck_directory()
        values = {
            "identity": identity.alias, "client_id": entry.client_id,
            "tenant_id": entry.tenant_id, "mtls_endpoint": entry.mtls_endpoint,
            "identity_type": entry.identity_type,
        }
        values.update(_record_names(entry.der))
        # Any character str.splitlines() breaks on (\n, \r, \v, \f, \x1c-\x1e, \x85, \u2028,
        # \u2029) would split the header line when read back and truncate the value.
        if any(len((v + "x").splitlines()) != 1 for v in values.values()):
            raise StoreError("refusing to store metadata containing a line break")
        from cryptography.hazmat.primitives import serialization

        try:
            cert_pem = _policy.load_certificate(entry.der).public_bytes(
                serialization.Encoding.PEM
            )
        except ValueError as exc:
            raise StoreError("refusing to store an unparsable certificate") from exc
        header = MAGIC + "\n" + "".join(f"{k}: {v}\n" for k, v in values.items())
        try:
            key_pem = _as_secret(entry.key.key_pem)
            data = Secret(header.encode("utf-8") + key_pem.reveal() + cert_pem)
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800"
            raise StoreError("refusing to store metadata that is not valid Unicode") from exc
        path = self.path_for(identity)
        # Checked first, the thorough way (cryptography's parsers): a write is rare and slow.
        stored = self._parse(data, identity, issuer_cn, path, digest=None, thorough=True)
        self._sweep(path)
        self._atomic_write(path, data)
        return stored

    def _atomic_write(self, path: str, data: Secret[bytes], *, sync: bool = True) -> None:
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}-" \
              f"{os.urandom(4).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW | _O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create a temp file in {self.directory}: {exc}") from exc
        try:
            try:
                _fchmod(fd, 0o600)  # whatever the umask said
                half = len(data) // 2
                _write_range(fd, data, 0, half)
                _crash_point("temp-half-written")
                _write_range(fd, data, half, len(data))
                if sync:
                    os.fsync(fd)
                _crash_point("temp-synced")
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _crash_point("renamed")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot write store entry {path}: {exc}") from exc
        if sync:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        if not _POSIX:
            return  # directories cannot be opened for fsync on Windows; NTFS journals renames
        try:
            fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot sync store directory {self.directory}: {exc}") from exc

    def _sweep(self, path: str) -> None:
        """Remove temp files a crashed writer left (safe: the caller holds the lock)."""
        prefix = f".{os.path.basename(path)}.tmp-"
        for name in self._names():
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
                    log.debug("swept stray temp file %s", name)

    def _names(self) -> Iterator[str]:
        with os.scandir(self.directory) as it:
            for e in it:
                yield e.name

    # --- remove ----------------------------------------------------------------------------
    def remove(self, identity: Identity, x5t_s256: str | None = None) -> bool:
        """Delete the entry (if ``x5t_s256`` is given, only while it still holds that cert)."""
        self._recheck_directory()
        path = self.path_for(identity)
        if x5t_s256 is not None and self._x5t_at(path) != x5t_s256:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:  # e.g. a directory planted where the entry belongs
            raise StoreError(f"cannot remove store entry {path}: {exc}") from exc
        self._fsync_dir()
        return True

    @staticmethod
    def _x5t_at(path: str) -> str | None:
        """Thumbprint of the certificate currently in ``path`` (None if absent or unreadable)."""
        try:
            with open(path, "rb", opener=_nofollow) as f:
                data = Secret(f.read(MAX_ENTRY_BYTES + 1))
            block = _block(data, _CERT_BEGIN, _CERT_END, "certificate", path)
            if block is None:
                return None
            return x5t_s256(binascii.a2b_base64(block[len(_CERT_BEGIN) : -len(_CERT_END)]))
        except (OSError, ValueError, binascii.Error):
            return None

    def purge(self, identity: Identity) -> list[str]:
        """Remove the identity's entry, its stray temp files and its notes (a purge starts
        afresh: no back-off either); return the thumbprint of what went."""
        self._recheck_directory()
        path = self.path_for(identity)
        self._sweep(path)
        self.write_note(identity, "backoff", None)
        x5t = self._x5t_at(path)
        return [x5t or "unreadable entry"] if self.remove(identity) else []
