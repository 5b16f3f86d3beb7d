"""The token cache under threads, and its size bound.

Real client, real emulator; call counts come from the emulator's request log.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

import pytest

import msicert._token_cache as tokens_module
import msicert.backends.posix._ssl_transport as ssl_transport
from msicert._token_cache import TokenManager
from msicert.backends.contract import StaleCertificate

RESOURCES = [f"https://r{i}.example" for i in range(4)]


def _scopes(emu) -> Counter[str]:
    return Counter(parse_qs(r.body.decode())["scope"][0]
                   for r in emu.requests if r.endpoint == "token" and r.method == "POST")


def test_sixteen_threads_on_a_cold_client_make_one_manager_and_one_ests_call_per_resource(
        make_client, emu, monkeypatch):
    created: list[TokenManager] = []
    real_init = TokenManager.__init__

    def counting_init(self, *args, **kwargs):
        created.append(self)
        real_init(self, *args, **kwargs)

    class SlowTlsCache(ssl_transport.TlsCache):
        """Construction that takes a while (as building TLS state can): widens the window in
        which an unguarded _tokens() lets a second thread build a second manager."""

        def __init__(self, **kwargs):
            time.sleep(0.05)
            super().__init__(**kwargs)

    monkeypatch.setattr(TokenManager, "__init__", counting_init)
    monkeypatch.setattr(ssl_transport, "TlsCache", SlowTlsCache)  # what store.transport() makes
    c = make_client()  # cold: no certificate, no manager
    barrier = threading.Barrier(16)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = c.acquire_token(RESOURCES[i % 4]).access_token
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == [] and len(results) == 16
    assert len(created) == 1
    assert _scopes(emu) == {f"{r}/.default": 1 for r in RESOURCES}
    assert emu.count("issuecredential") == 1
    for i in range(4):  # every thread of one resource got the one token fetched for it
        assert len({results[j] for j in range(i, 16, 4)}) == 1


def test_rotation_while_threads_insert_does_not_break_iteration(make_client, emu):
    """Deterministic: the rotation's own scan of the cache waits, at its first comparison, for
    eight threads that each insert a token for a new resource. Unguarded, they insert while
    the scan iterates (RuntimeError: dictionary changed size during iteration); guarded, they
    wait for the scan to end and insert afterwards."""
    c = make_client()
    for r in RESOURCES:
        c.acquire_token(r)
    manager = c._tokens()
    cert = c.get_certificate()
    inserters: list[threading.Thread] = []
    errors: list[BaseException] = []

    def insert(i: int) -> None:
        try:
            c.acquire_token(f"https://new{i}.example")
        except BaseException as exc:
            errors.append(exc)

    class Thumbprint(str):
        """Compares equal like a str; at the first comparison made by the cache scan itself
        (not the TLS cache's dict lookup before it), lets eight inserters run."""

        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            scanning = sys._getframe(1).f_code.co_name in ("_drop_tokens_of", "<listcomp>")
            if scanning and not inserters:
                inserters.extend(threading.Thread(target=insert, args=(i,)) for i in range(8))
                for th in inserters:
                    th.start()
                for th in inserters:
                    th.join(0.5 / len(inserters))  # they insert now, or wait for the scan
            return str.__eq__(self, other)

        def __ne__(self, other: object) -> bool:
            return not self.__eq__(other)

    hooked = cert.replace(x5t_s256=Thumbprint(cert.x5t_s256))
    manager._reload(hooked, StaleCertificate("replaced"))  # forget, drop its tokens, re-read
    for th in inserters:
        th.join(30)
    assert inserters and errors == []
    assert emu.count("token") == 4 + 8
    assert c.acquire_token(RESOURCES[0]).source == "identity_provider"  # its token was dropped
    assert c.acquire_token("https://new0.example").source == "cache"  # inserted after the scan


def test_the_token_cache_is_bounded_oldest_out(make_client, emu):
    c = make_client()
    c._token_manager = manager = TokenManager(c, c.store.transport(), clock=time.time, max_cached=4)
    names = [f"https://b{i}.example" for i in range(10)]
    for name in names:
        c.acquire_token(name)
    assert len(manager._slots) == 4
    assert sorted(manager._slots) == sorted(f"{n}/.default" for n in names[-4:])
    assert emu.count("token") == 10
    assert c.acquire_token(names[-1]).source == "cache"
    assert c.acquire_token(names[0]).source == "identity_provider"  # it had been dropped
    assert len(manager._slots) == 4 and emu.count("token") == 11


def test_the_bound_drops_unservable_tokens_before_older_live_ones(make_client, emu):
    now = [time.time()]
    c = make_client(clock=lambda: now[0])
    c._token_manager = manager = TokenManager(c, c.store.transport(), clock=lambda: now[0],
                                              max_cached=2)
    c.acquire_token("https://old-but-live.example")  # 3600 s token
    emu.token_lifetime = 400.0  # served until 100 s from now (300 s margin)
    c.acquire_token("https://new-but-short.example")
    now[0] += 200
    emu.token_lifetime = 3600.0
    c.acquire_token("https://third.example")
    assert sorted(manager._slots) == ["https://old-but-live.example/.default",
                                      "https://third.example/.default"]
    assert c.acquire_token("https://old-but-live.example").source == "cache"


def test_the_default_bound_is_documented_and_applied(make_client):
    assert tokens_module.MAX_CACHED == 256
    assert "256" in (TokenManager.__doc__ or "")
    assert make_client()._tokens()._max_cached == 256


@pytest.mark.parametrize("threads", [32])
def test_a_full_cache_never_evicts_a_key_being_fetched(make_client, emu, threads):
    c = make_client()
    c.get_certificate()
    c._token_manager = manager = TokenManager(c, c.store.transport(), clock=time.time, max_cached=2)
    from msicert.emulator import Fault

    emu.inject("token", Fault(delay=0.2, times=None))
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            c.acquire_token(f"https://k{i % 8}.example")
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(60)
    emu.clear_faults()
    assert errors == []
    assert _scopes(emu) == {f"https://k{i}.example/.default": 1 for i in range(8)}
    assert len(manager._slots) <= 8


@pytest.mark.parametrize("resource", ["", "   ", "/", "/.default", " /.default"])
def test_a_resource_that_names_nothing_is_refused_before_any_mint(make_client, emu, resource):
    c = make_client()
    with pytest.raises(ValueError, match="resource is empty"):
        c.acquire_token(resource)
    assert emu.count("issuecredential") == 0 and emu.count("token") == 0


@pytest.mark.parametrize("resource", [None, 42])
def test_a_resource_that_is_not_a_str_is_a_type_error(make_client, emu, resource):
    with pytest.raises(TypeError, match="resource must be a str, not "):
        make_client().acquire_token(resource)
    assert emu.count("issuecredential") == 0


def test_cli_token_with_an_empty_resource_is_invalid_input(emu, store_dir):
    from tests.conftest import run_cli

    proc = run_cli("token", "--resource", " ", "--store-dir", store_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "msicert token: invalid input: resource is empty")
    assert emu.count("issuecredential") == 0
