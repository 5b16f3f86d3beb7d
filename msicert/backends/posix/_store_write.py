"""The store's write path: an entry's bytes put together, and any file of the store (entry,
note, token cache) replaced atomically: a temp file 0600 beside it, fsynced and renamed over
it, so a crash at any instant leaves the old file or the new one, never a torn file.

``_crash_point`` is the crash-test seam: tests replace it (in a child process) to die at one
of the phases of :func:`atomic_write`.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator

from ... import _policy
from ..._errors import StoreError
from ..._identity import Identity
from ..._lazylog import LazyLogger
from ..._secret import Secret
from ..contract import NewEntry
from ._fs import O_BINARY, O_CLOEXEC, O_NOFOLLOW, POSIX, fchmod
from ._store_read import MAGIC, as_secret

__all__ = ["atomic_write", "entry_bytes", "fsync_dir", "sweep"]

log = LazyLogger("msicert")


def _no_crash(phase: str) -> None:
    """Crash-test seam: tests replace it in a child process to die at ``phase``."""


_crash_point = _no_crash


def _write_range(fd: int, data: Secret[bytes], start: int, stop: int) -> None:
    # The bytes are revealed inside the call expression only: no local of this frame ever
    # refers to them, so a traceback that captures locals shows the Secret, not the key.
    while start < stop:
        start += os.write(fd, memoryview(data.reveal())[start:stop])


def _record_names(der: bytes) -> dict[str, str]:
    """The ``subject``/``issuer`` metadata lines for a certificate about to be stored."""
    try:
        cert = _policy.load_certificate(der)
    except ValueError:
        return {}  # entry_bytes refuses it a moment later, with its own message
    return {
        "subject": base64.b64encode(cert.subject.public_bytes()).decode("ascii"),
        "issuer": base64.b64encode(cert.issuer.public_bytes()).decode("ascii"),
    }


def entry_bytes(identity: Identity, entry: NewEntry) -> Secret[bytes]:
    """The bytes ``entry`` is stored as: the metadata lines, the private key, the certificate.

    StoreError for metadata a header line cannot hold and for an unparsable certificate.
    """
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
        key_pem = as_secret(entry.key.key_pem)
        return Secret(header.encode("utf-8") + key_pem.reveal() + cert_pem)
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800"
        raise StoreError("refusing to store metadata that is not valid Unicode") from exc


def atomic_write(directory: str, path: str, data: Secret[bytes], *, sync: bool = True) -> None:
    """Replace ``path`` (in ``directory``) with ``data``: temp file 0600, rename; with
    ``sync``, the file and the directory are fsynced too. StoreError says what failed."""
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}-" \
          f"{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY | O_NOFOLLOW | O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create a temp file in {directory}: {exc}") from exc
    try:
        try:
            fchmod(fd, 0o600)  # whatever the umask said
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
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable (nothing to do on Windows)."""
    if not POSIX:
        return  # directories cannot be opened for fsync on Windows; NTFS journals renames
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot sync store directory {directory}: {exc}") from exc


def sweep(directory: str, path: str) -> None:
    """Remove temp files a crashed writer of ``path`` left (safe: the caller holds the lock)."""
    prefix = f".{os.path.basename(path)}.tmp-"
    for name in _names(directory):
        if name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                log.debug("swept stray temp file %s", name)


def _names(directory: str) -> Iterator[str]:
    with os.scandir(directory) as it:
        for e in it:
            yield e.name
