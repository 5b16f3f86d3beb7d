"""``probe(timeout=...)`` and ``client.request(..., timeout=...)`` are bounded in time however
slowly the server answers: a server that trickles its status line one byte at a time, its
header lines one by one, or its body, never holds the caller past the timeout.

The probe's server is a real TCP server on 127.0.0.1 written here (threads); ``request()``
meets the emulator's ``trickle_headers`` / ``trickle_body`` faults on its mTLS ``/resource``.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from msicert import probe
from msicert.emulator import Fault
from tests.conftest import cli_env

SLACK = 1.5  # seconds allowed past a timeout (thread wake-ups on a loaded 2-core machine)
RESOURCE = "https://vault.azure.net"


class Trickler:
    """Answers every connection slowly, for ever (until closed): ``status`` sends the status
    line one byte at a time, ``headers`` one header line at a time, ``body`` one body byte
    at a time after a whole head. The status is 400, what a host with IMDS v2 answers a probe.
    """

    def __init__(self, what: str, interval: float = 0.05) -> None:
        self.what, self.interval = what, interval
        self.stop = threading.Event()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _chunks(self):
        status = b"HTTP/1.1 400 Bad Request\r\n"
        if self.what == "status":
            yield from (status[i : i + 1] for i in range(len(status)))
            while True:  # then header bytes, one at a time
                yield b"X"
        yield status + b"Server: IMDS/150.870.65.1854\r\n"
        if self.what == "headers":
            n = 0
            while True:
                n += 1
                yield f"X-Slow-{n}: 1\r\n".encode()
        yield b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        while True:
            yield b"{"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for chunk in self._chunks():
                    conn.sendall(chunk)
                    if self.stop.wait(self.interval):
                        return
            except OSError:
                return  # the client gave up: what is being tested

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(params=["status", "headers", "body"])
def trickler(request):
    server = Trickler(request.param)
    yield server
    server.close()


def _timed(call, limit: float):
    """(seconds, result or exception) of ``call()`` run in a thread, failing the test when
    it is still running ``limit`` seconds in (instead of hanging the suite)."""
    out: list = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            value = call()
        except BaseException as exc:
            value = exc
        out.append((time.monotonic() - t0, value))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert out, f"still running after {limit} s"
    return out[0]


def test_probe_answers_within_its_timeout_against_a_trickling_server(trickler):
    elapsed, result = _timed(lambda: probe(trickler.url, timeout=2), 2 + SLACK + 5)
    assert not isinstance(result, BaseException), result
    assert elapsed < 2 + SLACK, elapsed
    assert result.source == "none" and result.unreachable
    assert "IMDSv2 probe" in result.imds_v2_reason and "timed out" in result.imds_v2_reason
    assert trickler.connections >= 1


def test_probe_command_answers_within_its_timeout_against_a_trickling_server(trickler):
    import subprocess

    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "msicert", "probe", "--timeout", "2", "--imds-endpoint",
         trickler.url], capture_output=True, text=True, env=cli_env(), timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert "timed out" in proc.stdout and "Traceback" not in proc.stderr
    assert elapsed < 2 + SLACK + 3, elapsed  # + the interpreter's start


@pytest.mark.parametrize("kind", ["trickle_headers", "trickle_body"])
def test_request_is_a_timeout_error_within_its_timeout_against_a_trickling_resource(
        make_client, emu, kind):
    client = make_client()
    client.acquire_token(RESOURCE)  # the token is there: only the resource is slow
    url = f"{emu.ests_url}/resource"
    emu.inject("resource", Fault(kind=kind, delay=0.1))
    elapsed, error = _timed(lambda: client.request("GET", url, resource=RESOURCE, timeout=3),
                            3 + SLACK + 5)
    assert isinstance(error, TimeoutError), repr(error)
    assert str(error) == f"{url} did not answer within 3 s"
    assert 3 <= elapsed < 3 + SLACK, elapsed
    assert emu.count("resource") == 1  # not retried
    assert client.request("GET", url, resource=RESOURCE, timeout=3).status == 200  # recovers
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1


def test_request_is_a_timeout_error_against_a_resource_that_never_answers(make_client, emu):
    client = make_client()
    client.acquire_token(RESOURCE)
    url = f"{emu.ests_url}/resource"
    emu.inject("resource", Fault(status=200, delay=8))  # silent for 8 s, then answers
    elapsed, error = _timed(lambda: client.request("GET", url, resource=RESOURCE, timeout=1),
                            1 + SLACK + 5)
    assert isinstance(error, TimeoutError), repr(error)
    assert str(error) == f"{url} did not answer within 1 s"
    assert elapsed < 1 + SLACK, elapsed
