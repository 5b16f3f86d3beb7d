"""In-process hot paths: the memory view of the certificate and the token cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from _benchutil import describe, describe_floor

MICRO = pytest.mark.benchmark(
    group="hot path", min_time=2e-5, max_time=0.5, warmup=True, warmup_iterations=20000
)


@MICRO
def test_floor_memory_hit(benchmark: Any, stored_cert: Any) -> None:
    """Floor: one dict lookup and one ``t0 <= time.time() < t1`` comparison."""
    d = {"system": stored_cert}
    k = "system"
    t0, t1 = stored_cert.not_before_ts, stored_cert.renew_after_ts

    def floor() -> Any:
        v = d[k]
        return v if t0 <= time.time() < t1 else None

    assert floor() is stored_cert
    describe_floor(benchmark, "dict lookup + time comparison")
    benchmark(floor)


@MICRO
def test_memory_hit(
    benchmark: Any, make_client: Callable[[str], Any], populated_store: Callable[[int], str]
) -> None:
    """``client.get_certificate()`` with a fresh certificate already in memory."""
    client = make_client(populated_store(1))
    assert client.get_certificate().source == "store"
    assert client.get_certificate().source == "memory"
    describe(benchmark, "memory hit", floor="test_floor_memory_hit", max_ratio=10.0, max_us=1.0)
    result = benchmark(client.get_certificate)
    assert result.source == "memory"


@MICRO
def test_token_cache_hit(
    benchmark: Any,
    emulator: Any,
    make_client: Callable[[str], Any],
    populated_store: Callable[[int], str],
) -> None:
    """``client.acquire_token(resource)`` answered from the token cache (no network)."""
    client = make_client(populated_store(1))
    resource = "https://vault.azure.net"
    first = client.acquire_token(resource)
    assert first.source in ("identity_provider", "shared_cache")
    calls = emulator.count("token")
    assert client.acquire_token(resource).source == "cache"
    describe(benchmark, "token served from cache", max_us=1.0)
    token = benchmark(client.acquire_token, resource)
    assert token.source == "cache"
    assert emulator.count("token") == calls  # really no ESTS call while measuring
