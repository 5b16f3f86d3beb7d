"""``probe(timeout=...)`` and ``client.request(..., timeout=...)`` are bounded in time however
slowly the server answers: a server that trickles its status line one byte at a time, its
header lines one by one, or its body, never holds the caller past the timeout.

The probe's server is a real TCP server on 127.0.0.1 written here (threads); ``request()``
meets the emulator's ``trickle_headers`` / ``trickle_body`` faults on its mTLS ``/resource``.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

from msicert import probe
from msicert.emulator import Fault
from tests.conftest import cli_env
from tests.trickler import Trickler

SLACK = 1.5  # seconds allowed past a timeout (thread wake-ups on a loaded 2-core machine)
RESOURCE = "https://vault.azure.net"


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
