"""Size bounds: huge directories, huge or odd store files, huge answers.

Every case must finish in bounded time and memory. Time limits here are generous (speed
targets live in benchmarks/); memory is measured with tracemalloc (Python allocations).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc

import pytest

from msicert import Identity, ImdsResponseError, StoreError, TokenError
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix import _store_read
from msicert.backends.posix._file_store import FileStore
from msicert.backends.posix._store_read import MAX_ENTRY_BYTES
from msicert.emulator import Fault
from msicert.wire._ests import _MAX_BODY as _MAX_TOKEN_BODY
from msicert.wire._http import MAX_BODY
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy
from tests.certgen import ISSUER_CN
from tests.store_contract import entry

MiB = 1 << 20


def bounded(fn, seconds: float):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes too long."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    box["elapsed"] = time.monotonic() - t0
    if "error" in box:
        raise box["error"]
    return box["value"], box["elapsed"]


def peak_of(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _make_files(directory: str, names) -> None:
    for name in names:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


# --- store directory with 10,000 foreign files --------------------------------------------


def test_ten_thousand_foreign_files_do_not_slow_find_put_or_purge(make_client, emu, store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    _make_files(store_dir, (f"foreign-{i:05d}.pem" for i in range(5_000)))
    _make_files(store_dir, (f"msal_mtls.{i:05d}.pem" for i in range(2_500)))  # other "tags"
    _make_files(store_dir, (f".other.pem.tmp-{i}-deadbeef" for i in range(2_500)))
    assert len(os.listdir(store_dir)) == 10_000
    c = make_client()
    cert, elapsed = bounded(c.get_certificate, 60)  # mint: find, lock, put (sweeps the dir)
    assert cert.source == "imds"
    (found, peak) = peak_of(lambda: store.find(Identity(), issuer_cn=ISSUER_CN))
    assert found.x5t_s256 == cert.x5t_s256
    assert peak < 1 * MiB, peak  # find opens one file; it never lists the directory
    _, put_peak = peak_of(lambda: store.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN))
    assert put_peak < 2 * MiB, put_peak  # the sweep streams the listing
    assert len(bounded(lambda: store.purge(Identity()), 30)[0]) == 1
    assert len(os.listdir(store_dir)) == 10_000 + 1  # the foreign files stay; + the lock file
    print(f"\n10,000 foreign files: mint {elapsed:.2f} s, find peak {peak / 1024:.0f} KiB, "
          f"put peak {put_peak / 1024:.0f} KiB")


def test_ten_thousand_stray_temp_files_of_ours_are_swept_in_one_put(store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    _make_files(store_dir, (f".msal_mtls.pem.tmp-{i}-0000abcd" for i in range(10_000)))
    _, elapsed = bounded(lambda: store.put(Identity(), entry(), issuer_cn=ISSUER_CN), 60)
    assert sorted(os.listdir(store_dir)) == ["msal_mtls.pem"]
    print(f"\nswept 10,000 stray temp files in {elapsed:.2f} s")


# --- a 10 MB store file -------------------------------------------------------------------


def _plant(store: FileStore, size: int) -> str:
    store.ensure_directory()
    path = store.path_for(Identity())
    chunk = b"msicert-entry: 1\n" + b"#" * (MiB - 17)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)
    os.chmod(path, 0o600)
    return path


def test_a_10_mb_store_file_is_corrupt_after_reading_at_most_max_entry_bytes(store_dir,
                                                                            monkeypatch):
    store = FileStore(store_dir)
    _plant(store, 10 * MiB)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd, n):
        data = real_read(fd, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(_store_read.os, "read", counting_read)

    def find():
        with pytest.raises(CorruptEntry, match="larger than") as info:
            store.find(Identity(), issuer_cn=ISSUER_CN)
        return info.value

    _, peak = peak_of(find)
    monkeypatch.undo()
    assert sum(reads) <= MAX_ENTRY_BYTES + 1, reads
    assert peak < 4 * MAX_ENTRY_BYTES, peak  # nowhere near the 10 MB on disk


def test_a_10_mb_store_file_is_replaced_by_a_fresh_mint_in_bounded_time(make_client, emu,
                                                                       store_dir):
    path = _plant(FileStore(store_dir), 10 * MiB)
    c = make_client()
    (cert, peak), _ = bounded(lambda: peak_of(c.get_certificate), 60)
    assert cert.source == "imds" and emu.count("issuecredential") == 1
    assert os.path.getsize(path) < MAX_ENTRY_BYTES
    assert peak < 8 * MiB, peak  # the mint's own allocations; the 10 MB were never read
    # remove(identity, thumbprint) reads at most MAX_ENTRY_BYTES + 1 too
    _plant(FileStore(store_dir), 10 * MiB)
    (removed, rpeak) = peak_of(lambda: FileStore(store_dir).remove(Identity(), cert.x5t_s256))
    assert removed is False and rpeak < 4 * MAX_ENTRY_BYTES, rpeak


# --- odd things where the entry belongs -----------------------------------------------------


def test_a_fifo_planted_as_the_entry_does_not_hang_find_or_the_client(make_client, emu,
                                                                      store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    path = store.path_for(Identity())
    os.mkfifo(path, 0o600)

    def find():
        with pytest.raises(CorruptEntry, match="not a regular file"):
            store.find(Identity(), issuer_cn=ISSUER_CN)

    bounded(find, 10)
    assert bounded(lambda: FileStore(store_dir).remove(Identity(), "x5t"), 10)[0] is False
    cert, _ = bounded(make_client().get_certificate, 60)  # removes the FIFO, mints
    assert cert.source == "imds" and os.path.isfile(path)


def test_a_directory_planted_as_the_entry_is_a_store_error(make_client, emu, store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    os.mkdir(store.path_for(Identity()))
    with pytest.raises(StoreError):
        bounded(make_client().get_certificate, 60)


def test_a_symlink_to_a_device_is_never_read(store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    os.symlink("/dev/zero", store.path_for(Identity()))
    with pytest.raises(CorruptEntry, match="symlink"):
        bounded(lambda: store.find(Identity(), issuer_cn=ISSUER_CN), 10)


# --- huge answers from IMDS and ESTS ----------------------------------------------------------


class RawServer:
    """Loopback HTTP server answering every request with one prebuilt response, sent from
    that buffer (so tracemalloc sees only the client's allocations, not the server's)."""

    def __init__(self, head: bytes, body: bytes) -> None:
        self.response = memoryview(head + body)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(self.response)
                except OSError:
                    pass  # the client stopped reading: that is the point

    def close(self) -> None:
        self.sock.close()


def test_a_huge_imds_answer_is_refused_after_reading_max_body():
    body = b" " * (64 * MiB)
    server = RawServer(b"HTTP/1.1 200 OK\r\nServer: IMDS/1\r\nContent-Length: %d\r\n"
                       b"Content-Type: application/json\r\n\r\n" % len(body), body)
    try:
        imds = ImdsClient(server.url, retry=RetryPolicy(scale=0.001))

        def call():
            with pytest.raises(ImdsResponseError, match="larger than"):
                imds.get_platform_metadata(Identity())

        (_, peak), elapsed = bounded(lambda: peak_of(call), 30)
    finally:
        server.close()
    assert peak < 4 * MAX_BODY, peak  # a 64 MiB answer costs about one MAX_BODY
    print(f"\n64 MiB IMDS answer refused in {elapsed:.2f} s, client peak {peak / MiB:.1f} MiB")


def test_a_huge_imds_error_body_does_not_poison_the_retry(emu):
    imds = ImdsClient(emu.imds_url, retry=RetryPolicy(scale=0.001))
    emu.inject("getplatformmetadata", Fault(status=503, body=b"e" * (3 * MiB), times=2))
    meta, _ = bounded(lambda: imds.get_platform_metadata(Identity()), 30)
    assert meta.client_id and emu.count("getplatformmetadata") == 3


def test_a_huge_ests_answer_is_a_token_error(make_client, emu):
    c = make_client()
    c.get_certificate()
    body = b'{"x":"' + b"a" * (16 * _MAX_TOKEN_BODY) + b'"}'
    emu.inject("token", Fault(status=200, body=body))

    def call():
        with pytest.raises(TokenError, match="not a JSON object"):
            c.acquire_token("https://vault.azure.net")

    (_, peak), _ = bounded(lambda: peak_of(call), 30)
    # the in-process emulator copies the body once to send it; the client reads at most
    # _MAX_BODY + 1 of it (and parses a _MAX_BODY slice)
    assert peak < len(body) + 4 * _MAX_TOKEN_BODY, peak
