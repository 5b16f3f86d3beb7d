"""Handshake certificate load: the first SSLContext for a certificate, and the cached one.

Trust comes from OpenSSL's default paths in both the library and the floor, measured twice:
with ``SSL_CERT_FILE`` naming the emulator's one-certificate CA file (the emulator setup) and
with it unset, i.e. the system CA bundle (what a VM loads).

The target is judged against the separate floor benchmark. As a noise diagnostic on this
shared machine, the measured benchmark also times one floor call in its untimed ``setup``
before every round (interleaved), reported by ``check.py`` as INFO.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _benchutil import describe, describe_floor

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the ssl transport is the POSIX transport (WinHTTP on Windows)"
)
TRUST = ["emulator-ca", "system-ca"]
ROUNDS = {"emulator-ca": 1000, "system-ca": 60}
CONTEXT = pytest.mark.benchmark(group="tls")


@pytest.fixture
def trust(request: pytest.FixtureRequest, emulator: Any) -> Iterator[str]:
    """Point (or not) OpenSSL's default verify file at the emulator CA for one test."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "system-ca":
            mp.delenv("SSL_CERT_FILE", raising=False)
        else:
            mp.setenv("SSL_CERT_FILE", emulator.ca_file)
        yield request.param


def floor_for(path: str) -> Callable[[], ssl.SSLContext]:
    """The floor: ``SSLContext(PROTOCOL_TLS_CLIENT)`` + ``load_cert_chain`` + default paths."""

    def floor() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(path)
        ctx.set_default_verify_paths()
        return ctx

    return floor


@CONTEXT
@pytest.mark.parametrize("trust", TRUST, indirect=True)
def test_floor_build_context(benchmark: Any, stored_cert: Any, trust: str) -> None:
    """Floor of the first context for a certificate."""
    floor = floor_for(stored_cert.store)
    floor()
    describe_floor(benchmark, "SSLContext + load_cert_chain + set_default_verify_paths",
                   trust=trust)
    benchmark.pedantic(floor, rounds=ROUNDS[trust], warmup_rounds=3)


@CONTEXT
@pytest.mark.parametrize("trust", TRUST, indirect=True)
def test_build_context(benchmark: Any, stored_cert: Any, trust: str) -> None:
    """``_ssl_transport.build_context(cert)``: the first SSLContext for a certificate."""
    from msicert.backends.posix._ssl_transport import build_context

    floor = floor_for(stored_cert.store)
    interleaved: list[float] = []

    def setup() -> None:
        start = time.perf_counter()
        floor()
        interleaved.append(time.perf_counter() - start)

    build_context(stored_cert)
    benchmark.pedantic(build_context, args=(stored_cert,), setup=setup, rounds=ROUNDS[trust],
                       warmup_rounds=0)
    describe(benchmark, f"handshake-cert-load, first context ({trust})",
             floor=f"test_floor_build_context[{trust}]", max_ratio=1.2, trust=trust,
             interleaved=[{"label": "interleaved floor (diagnostic)", "samples_s": interleaved}])


@pytest.mark.benchmark(
    group="hot path", min_time=2e-5, max_time=0.5, warmup=True, warmup_iterations=20000
)
def test_tls_cache_hit(benchmark: Any, stored_cert: Any, emulator: Any) -> None:
    """``TlsCache.context(cert)`` once the context exists."""
    from msicert.backends.posix._ssl_transport import TlsCache

    cache = TlsCache()
    first = cache.context(stored_cert)
    describe(benchmark, "handshake-cert-load, repeated (TlsCache hit)", max_us=1.0)
    assert benchmark(cache.context, stored_cert) is first
