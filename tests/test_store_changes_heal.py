"""A running client heals when another process changes the store underneath it.

Another process (a real ``python -m msicert`` or a small Python script, or ``rm -rf``)
purges the entry, deletes the whole store directory, or puts another certificate in place
(its own mint after a purge, or a renewal). The next ``acquire_token``, ``ssl_context()``,
``request()`` and ``MtlsTransport.send`` of the running client then succeed: they read the
store again, or mint exactly once, and never raise ``FileNotFoundError`` or
``StaleCertificate``.

A client that already holds a pool or context for its certificate does not touch the file
(that certificate is still valid); each test makes the client load the entry again, as a
long-running process does after ``close()`` or on its first ``ssl_context()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import urllib3
from azure.core.rest import HttpRequest
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets._shared import http_challenge_cache

from msicert.azure import MtlsTransport, sdk_kwargs
from msicert.emulator import decode_token_payload
from tests.conftest import cli_env, run_cli

pytestmark = pytest.mark.slow

CHANGES = ("purge", "rm-rf", "junk", "mint-after-purge", "renewal", "claims-mint")
# What the running client must mint after each change: nothing where a usable certificate
# is in the store (another process put it there), one where the store holds none (or junk).
CLIENT_MINTS = {"purge": 1, "rm-rf": 1, "junk": 1, "mint-after-purge": 0, "renewal": 0,
                "claims-mint": 0}
# What the other process minted.
OTHER_MINTS = {"purge": 0, "rm-rf": 0, "junk": 0, "mint-after-purge": 1, "renewal": 1,
               "claims-mint": 1}
CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'

# Renews the entry in another process: its clock is past the entry's renew_after.
_RENEW = textwrap.dedent("""
    import sys, time
    from msicert import ManagedIdentityClient
    old = ManagedIdentityClient(store_dir=sys.argv[1]).status()
    ahead = old.renew_after_ts - time.time() + 5
    client = ManagedIdentityClient(store_dir=sys.argv[1], clock=lambda: time.time() + ahead)
    new = client.get_certificate()
    assert new.x5t_s256 != old.x5t_s256 and new.source == "imds", new
    print(new.x5t_s256)
""")


@pytest.fixture(autouse=True)
def _cold_challenge_cache():
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _change(kind: str, store_dir: str) -> None:
    """Change the store from another process, as ``kind`` says."""
    if kind in ("purge", "mint-after-purge"):
        proc = run_cli("purge", "--store-dir", store_dir)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("removed 1 entry and "), proc.stdout
    if kind == "junk":  # another program overwrote the entry
        subprocess.run(["sh", "-c", 'printf "not an entry\\n" > "$1"', "sh",
                        os.path.join(store_dir, "msal_mtls.pem")], check=True, timeout=30)
    if kind == "claims-mint":  # a claims challenge answered in another process
        proc = run_cli("token", "--resource", "https://storage.azure.com", "--claims", CLAIMS,
                       "--store-dir", store_dir)
        assert proc.returncode == 0, proc.stderr
    if kind == "rm-rf":
        subprocess.run(["rm", "-rf", store_dir], check=True, timeout=30)
        assert not os.path.exists(store_dir)
    if kind == "mint-after-purge":
        proc = run_cli("cert", "--store-dir", store_dir)
        assert proc.returncode == 0, proc.stderr
    if kind == "renewal":
        proc = subprocess.run([sys.executable, "-c", _RENEW, store_dir], capture_output=True,
                              text=True, env=cli_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr


def _changed(make_client, emu, store_dir, kind):
    """A client with a certificate and a token, then the store changed by another process.
    Returns (client, the first certificate's thumbprint)."""
    client = make_client()
    first = client.acquire_token(emu.resources.vault_resource).x5t_s256
    assert emu.count("issuecredential") == 1
    _change(kind, store_dir)
    assert emu.count("issuecredential") == 1 + OTHER_MINTS[kind]
    return client, first


def _check_healed(client, emu, kind, first: str) -> str:
    """Exactly the mints the change calls for; the client's certificate is the store's."""
    assert emu.count("issuecredential") == 1 + OTHER_MINTS[kind] + CLIENT_MINTS[kind]
    current = client.get_certificate().x5t_s256
    assert current != first
    assert client.status().x5t_s256 == current  # what the client uses is what is stored
    return current


def _vault_put(pool: urllib3.PoolManager, emu, token) -> int:
    return pool.request(
        "PUT", f"{emu.vault_url}/secrets/s?api-version=7.6", body=b'{"value": "v"}',
        headers={"Authorization": f"mtls_pop {token.access_token}",
                 "Content-Type": "application/json"}).status


@pytest.mark.parametrize("kind", CHANGES)
def test_acquire_token_after_the_store_changed_heals(make_client, emu, store_dir, kind):
    client, first = _changed(make_client, emu, store_dir, kind)
    client.close()  # a new pool: the entry is loaded again
    token = client.acquire_token("https://storage.azure.com")
    current = _check_healed(client, emu, kind, first)
    assert token.x5t_s256 == current and token.source == "identity_provider"
    again = client.acquire_token(emu.resources.vault_resource)  # the old token is not served
    assert again.x5t_s256 == current
    assert emu.count("issuecredential") == 1 + OTHER_MINTS[kind] + CLIENT_MINTS[kind]


@pytest.mark.parametrize("kind", CHANGES)
@pytest.mark.parametrize("closed", [False, True], ids=["first-context", "after-close"])
def test_ssl_context_after_the_store_changed_follows_it_in_one_call(
        make_client, emu, store_dir, kind, closed):
    client, first = _changed(make_client, emu, store_dir, kind)
    if closed:
        client.close()
    ctx = client.ssl_context()  # builds a context for the caller: reads the entry
    current = _check_healed(client, emu, kind, first)
    token = client.acquire_token(emu.resources.vault_resource)
    assert token.x5t_s256 == current
    # The context presents the certificate the token is bound to: the vault checks cnf.
    assert _vault_put(urllib3.PoolManager(ssl_context=ctx), emu, token) == 200
    assert emu.violations == []
    assert client.ssl_context() is ctx


@pytest.mark.parametrize("kind", CHANGES)
def test_request_after_the_store_changed_heals(make_client, emu, store_dir, kind):
    client, first = _changed(make_client, emu, store_dir, kind)
    client.close()
    resp = client.request("PUT", f"{emu.vault_url}/secrets/s?api-version=7.6",
                          resource=emu.resources.vault_resource, body=b'{"value": "v"}',
                          headers={"Content-Type": "application/json"})
    assert resp.status == 200, resp.data
    current = _check_healed(client, emu, kind, first)
    put = [r for r in emu.requests if r.endpoint == "keyvault"][-1]
    assert decode_token_payload(put.headers["Authorization"].split(" ", 1)[1])[
        "cnf"]["x5t#S256"] == current
    assert emu.violations == []


@pytest.mark.parametrize("kind", CHANGES)
def test_mtls_transport_after_the_store_changed_heals(make_client, emu, store_dir, kind):
    client = make_client()
    kw = sdk_kwargs(client)
    assert isinstance(kw["transport"], MtlsTransport)
    secrets = SecretClient(emu.vault_url, **kw)
    secrets.set_secret("s", "before")  # the SDK's policy now caches a token bound to it
    first = client.get_certificate().x5t_s256
    assert emu.count("issuecredential") == 1
    _change(kind, store_dir)
    client.close()  # the transport's next send needs a new pool: the entry is loaded again
    assert secrets.set_secret("s", "after").value == "after"
    current = _check_healed(client, emu, kind, first)
    assert secrets.get_secret("s").value == "after"
    put = [r for r in emu.requests if r.endpoint == "keyvault" and r.method == "PUT"][-1]
    assert decode_token_payload(put.headers["Authorization"].split(" ", 1)[1])[
        "cnf"]["x5t#S256"] == current
    assert emu.violations == []
    assert emu.count("issuecredential") == 1 + OTHER_MINTS[kind] + CLIENT_MINTS[kind]


@pytest.mark.parametrize("kind", CHANGES)
def test_mtls_transport_send_without_a_token_after_the_store_changed(
        make_client, emu, store_dir, kind):
    client, first = _changed(make_client, emu, store_dir, kind)
    client.close()
    transport = MtlsTransport(client)
    # No Authorization: the vault answers its challenge, over a handshake with the healed
    # certificate (the stand-in requires a client certificate its CA issued).
    resp = transport.send(HttpRequest("GET", f"{emu.vault_url}/secrets/s?api-version=7.6"))
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers
    _check_healed(client, emu, kind, first)
    assert emu.violations == []


def _within(seconds: float, call):
    """``call()`` in a daemon thread; fails the test (instead of hanging it) if it blocks."""
    import threading

    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


@pytest.mark.parametrize("use", ["acquire_token", "ssl_context"])
def test_an_entry_replaced_by_a_fifo_is_a_stale_certificate_not_a_hang(
        make_client, emu, store_dir, use):
    client = make_client()
    first = client.acquire_token(emu.resources.vault_resource).x5t_s256
    path = client.store.path_for(client.identity)
    subprocess.run(["sh", "-c", 'rm -f "$1" && mkfifo -m 600 "$1"', "sh", path], check=True,
                   timeout=30)
    client.close()
    if use == "acquire_token":
        _within(20, lambda: client.acquire_token("https://storage.azure.com"))
    else:
        _within(20, client.ssl_context)
    assert emu.count("issuecredential") == 2  # the FIFO is no entry: one new certificate
    assert client.get_certificate().x5t_s256 != first
    assert os.path.isfile(path) and client.status().x5t_s256 == client.get_certificate().x5t_s256


@pytest.mark.parametrize("use", ["acquire_token", "ssl_context"])
def test_an_entry_replaced_by_a_directory_is_a_store_error_naming_it(
        make_client, emu, store_dir, use):
    from msicert import StoreError

    client = make_client()
    client.acquire_token(emu.resources.vault_resource)
    path = client.store.path_for(client.identity)
    subprocess.run(["sh", "-c", 'rm -f "$1" && mkdir -m 700 "$1"', "sh", path], check=True,
                   timeout=30)
    client.close()
    call = (lambda: client.acquire_token("https://storage.azure.com")) \
        if use == "acquire_token" else client.ssl_context
    with pytest.raises(StoreError) as info:
        _within(20, call)
    assert path in str(info.value)
    assert os.path.isdir(path)  # msicert never removes a directory it did not make


@pytest.mark.parametrize("kind", ["purge", "mint-after-purge"])
def test_threads_that_find_the_store_changed_at_once_heal_with_one_mint_at_most(
        make_client, emu, store_dir, kind):
    import threading

    client, first = _changed(make_client, emu, store_dir, kind)
    client.close()
    start, errors, bound = threading.Barrier(8), [], []

    def call(n: int) -> None:
        start.wait(10)
        try:
            if n % 2:
                bound.append(client.acquire_token(f"https://r{n}.example").x5t_s256)
            else:
                client.ssl_context()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    current = _check_healed(client, emu, kind, first)
    assert bound == [current] * 4
