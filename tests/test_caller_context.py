"""``client.ssl_context()`` is the caller's own context: msicert's connections to ESTS never
use it, so a CA the caller trusts in it (``load_verify_locations``) is not trusted for ESTS.

The emulator's ``untrusted_server`` fault makes its ESTS present a leaf from a CA no client
trusts; the caller's context is told to trust that CA, and a real handshake with it proves it
does. msicert's token request must still refuse that server.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from msicert import TokenError
from msicert.emulator import Fault
from msicert.emulator._ca import fault_server_tls


def _handshake(ctx, url: str) -> str:
    """A TLS handshake with ``url``'s server through ``ctx``; its TLS version."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        return str(tls.version())


def _tokens(emu) -> list[str]:
    return [r.method for r in emu.requests if r.endpoint == "token"]


@pytest.mark.parametrize("first", ["context", "token"])
def test_a_ca_trusted_in_the_callers_context_is_not_trusted_for_ests(make_client, emu, first):
    client = make_client()
    vault = "https://vault.azure.net"
    if first == "token":
        client.acquire_token(vault)  # msicert's pool for this certificate exists first
    ctx = client.ssl_context()
    rogue = fault_server_tls(urlsplit(emu.ests_url).hostname or "", trusted=False).ca_pem
    ctx.load_verify_locations(cadata=rogue.decode("ascii"))
    emu.inject("token", Fault(kind="untrusted_server", times=2))
    # The caller's context now trusts the rogue server: its own handshake succeeds ...
    assert _handshake(ctx, emu.ests_url).startswith("TLS")
    # ... and msicert's token request (a new connection, to the same rogue server) does not.
    with pytest.raises(TokenError) as info:
        client.acquire_token("https://storage.azure.com")
    assert "ESTS's certificate could not be verified" in str(info.value)
    assert "unable to get local issuer certificate" in str(info.value)
    assert _tokens(emu).count("TLS") == 2  # both faulted handshakes happened
    assert client.ssl_context() is ctx  # the caller keeps its context (and its CA)
    assert emu.count("issuecredential") == 1  # a server msicert cannot verify costs no mint
    assert client.acquire_token("https://storage.azure.com").token_type == "mtls_pop"
