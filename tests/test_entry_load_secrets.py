"""Loading a store entry into a TLS context leaves no private key in any frame's locals when
it fails: neither a StaleCertificate (the entry holds another certificate now) nor an SSLError
(the entry's key does not fit its certificate). Error reporters that capture locals would
otherwise upload the key. The entries are real ones the emulator issued; the walk over the
frames is the one of ``tests/test_traceback_secrets.py``.
"""

from __future__ import annotations

import re
import ssl
import sys
from pathlib import Path

import pytest

from msicert._secret import Secret
from msicert.backends.contract import StaleCertificate
from msicert.backends.posix._ssl_transport import TlsCache
from tests.certgen import key_pem, rsa_key
from tests.conftest import run_cli
from tests.test_traceback_secrets import _leaks, _local_reprs

pytestmark = pytest.mark.skipif(sys.platform == "win32",
                                reason="the file store's TLS loader (POSIX)")

_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n", re.S)


def _key_in(path: str) -> Secret[bytes]:
    """The private key block of the entry at ``path`` (kept in a Secret: this test's own
    frames are walked too)."""
    return Secret(_KEY.search(Path(path).read_bytes()).group(0))  # type: ignore[union-attr]


def _swap_key(path: str) -> None:
    """Put another key beside the entry's certificate (in a frame that is gone when the
    walked exception is raised)."""
    entry = Path(path)
    entry.write_bytes(_KEY.sub(lambda _: key_pem(rsa_key(5)), entry.read_bytes()))


def _load_error(cert) -> BaseException:
    """What building a TLS context for ``cert`` raises (its frames are the ones walked)."""
    try:
        TlsCache().context(cert)
    except Exception as exc:  # the exception under test
        return exc
    raise AssertionError("the entry loaded")


def test_a_stale_certificate_from_loading_an_entry_holds_no_key_in_its_frames(
        make_client, emu, store_dir):
    first = make_client().get_certificate()
    # Another process replaces the entry: its file now holds another certificate and key.
    assert run_cli("purge", "--store-dir", store_dir).returncode == 0
    assert run_cli("cert", "--store-dir", store_dir).returncode == 0
    exc = _load_error(first)
    assert isinstance(exc, StaleCertificate) and "no longer holds" in str(exc)
    reprs = _local_reprs(exc)
    assert "load_entry" in {where.split("@", 1)[0] for where, _ in reprs}
    assert _leaks(reprs, _key_in(first.store).reveal()) == []


def test_an_ssl_error_from_loading_an_entry_holds_no_key_in_its_frames(make_client, emu):
    first = make_client().get_certificate()
    _swap_key(first.store)
    exc = _load_error(first)  # the certificate is there, its key is another one
    assert isinstance(exc, ssl.SSLError)
    reprs = _local_reprs(exc)
    assert "load_entry" in {where.split("@", 1)[0] for where, _ in reprs}
    assert _leaks(reprs, _key_in(first.store).reveal()) == []
