"""File primitives the store's read and write paths share: who owns a file, which mode bits
count, and opens that never follow a symlink, block on a FIFO or leak into a child process."""

from __future__ import annotations

import errno
import os
import stat
import sys

__all__ = [
    "O_BINARY", "O_CLOEXEC", "O_NOFOLLOW", "O_NONBLOCK", "POSIX", "fchmod", "foreign_owner",
    "open_nofollow", "read_private",
]

POSIX = sys.platform != "win32"  # owner and mode bits; on Windows the profile's ACLs protect it
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: never let the C runtime translate newlines
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO planted as the entry must not hang

if sys.platform == "win32":

    def foreign_owner(st: os.stat_result) -> str:
        return ""  # ownership is an ACL matter on Windows (the user profile protects it)

    def fchmod(fd: int, mode: int) -> None:
        pass

else:

    def foreign_owner(st: os.stat_result) -> str:
        """Why ``st`` is not ours ("" when it is)."""
        if st.st_uid == os.geteuid():
            return ""
        return f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"

    def fchmod(fd: int, mode: int) -> None:
        """``os.fchmod`` (a no-op on Windows)."""
        os.fchmod(fd, mode)


def open_nofollow(path: str, flags: int) -> int:
    """``os.open`` that never follows a symlink, never blocks and closes on exec."""
    return os.open(path, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)


def read_private(path: str, limit: int, forbidden: int) -> tuple[bytes | None, str]:
    """``(bytes, "")`` of a regular file of ours of at most ``limit`` bytes whose mode has none
    of the ``forbidden`` bits; else ``(None, why)`` (``why`` empty when there is no file)."""
    try:
        fd = open_nofollow(path, os.O_RDONLY | O_BINARY)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or "unreadable"
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if foreign_owner(st):
            return None, foreign_owner(st)
        if POSIX and mode & forbidden:
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
