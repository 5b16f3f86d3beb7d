"""How each ESTS failure is classified (our certificate refused, ESTS's unverified, a
connection closed, a timeout) and the headers every ESTS request carries, over real TLS.

Every ESTS misbehaviour here is acted out by the emulator on 127.0.0.1 (see ``Fault``): a server
that alerts on our certificate (OpenSSL's own ``unknown_ca``), a server whose certificate fails
our check (untrusted CA, wrong name), a server that closes the connection mid-handshake, a
server that trickles its answer. The IMDS ``issuecredential`` count in the emulator's request
log says whether the client evicted and minted.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
import uuid

import pytest

import msicert
from msicert import Timeouts, TokenError
from msicert.emulator import Fault

RESOURCE = "https://vault.azure.net"
SLACK = 1.5  # s added to measured upper bounds


def _tokens(emu) -> list[str]:
    return [r.method for r in emu.requests if r.endpoint == "token"]


@pytest.fixture
def warm(make_client, emu):
    """A client holding a minted certificate; the request log starts empty after it."""
    c = make_client()
    cert = c.get_certificate()
    emu.reset()
    return c, cert


# --- 11.1: only an alert about our certificate (or invalid_client) evicts and mints ----------

def test_tls_alert_about_our_certificate_evicts_and_mints_exactly_once(warm, emu, make_client):
    c, old = warm
    emu.inject("token", Fault(kind="reject_certificate", times=1))
    token = c.acquire_token(RESOURCE)
    new = c.get_certificate()
    assert emu.count("issuecredential") == 1
    assert _tokens(emu) == ["TLS", "POST"]
    assert new.x5t_s256 != old.x5t_s256 and token.x5t_s256 == new.x5t_s256
    assert make_client().get_certificate().x5t_s256 == new.x5t_s256  # the store holds the new one


def test_tls_alert_about_our_certificate_twice_is_a_token_error_after_one_mint(warm, emu):
    c, _ = warm
    emu.inject("token", Fault(kind="reject_certificate", times=2))
    with pytest.raises(TokenError, match=r"rejected the client certificate twice.*UNKNOWN_CA"):
        c.acquire_token(RESOURCE)
    assert emu.count("issuecredential") == 1
    assert _tokens(emu) == ["TLS", "TLS"]


@pytest.mark.parametrize(("kind", "why"), [
    ("untrusted_server", "unable to get local issuer certificate"),
    ("wrong_server_name", "IP address mismatch"),
])
def test_a_failed_check_of_the_server_certificate_never_evicts_or_mints(
        warm, emu, make_client, kind, why):
    c, cert = warm
    emu.inject("token", Fault(kind=kind, times=1))
    with pytest.raises(TokenError) as info:
        c.acquire_token(RESOURCE)
    message = str(info.value)
    assert "ESTS's certificate could not be verified" in message and why in message
    assert emu.count("issuecredential") == 0 and emu.count("getplatformmetadata") == 0
    assert _tokens(emu) == ["TLS"]  # not retried either
    assert c.get_certificate().x5t_s256 == cert.x5t_s256
    assert make_client().get_certificate().x5t_s256 == cert.x5t_s256  # still in the store
    assert c.acquire_token(RESOURCE).x5t_s256 == cert.x5t_s256  # and usable once ESTS is fixed


def test_an_image_without_ca_certificates_never_evicts_or_mints(warm, emu, monkeypatch, tmp_path):
    c, cert = warm
    empty = tmp_path / "no-cas.pem"
    empty.write_bytes(b"")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))  # the context is built on first use
    monkeypatch.delenv("MSICERT_CA_BUNDLE", raising=False)  # no extra trust either
    with pytest.raises(TokenError, match="ESTS's certificate could not be verified"):
        c.acquire_token(RESOURCE)
    assert emu.count("issuecredential") == 0
    assert c.get_certificate().x5t_s256 == cert.x5t_s256


@pytest.mark.parametrize("kind", ["close_handshake", "reset_handshake"])
def test_a_connection_closed_mid_handshake_is_retried_once_without_eviction(warm, emu, kind):
    c, cert = warm
    emu.inject("token", Fault(kind=kind, times=1))
    token = c.acquire_token(RESOURCE)
    assert token.x5t_s256 == cert.x5t_s256
    assert emu.count("issuecredential") == 0
    assert _tokens(emu) == ["TLS", "POST"]


@pytest.mark.parametrize("kind", ["close_handshake", "reset_handshake"])
def test_a_connection_closed_mid_handshake_twice_is_a_token_error_without_eviction(
        warm, emu, kind):
    c, cert = warm
    emu.inject("token", Fault(kind=kind, times=2))
    with pytest.raises(TokenError, match="closed the connection twice"):
        c.acquire_token(RESOURCE)
    assert emu.count("issuecredential") == 0
    assert _tokens(emu) == ["TLS", "TLS"]
    assert c.get_certificate().x5t_s256 == cert.x5t_s256


def test_a_generic_handshake_failure_alert_is_not_a_rejection_of_our_certificate(warm, emu):
    c, cert = warm
    emu.inject("token", Fault(kind="reject_handshake", times=1))
    with pytest.raises(TokenError, match=r"HANDSHAKE_FAILURE.*was kept"):
        c.acquire_token(RESOURCE)
    assert emu.count("issuecredential") == 0 and _tokens(emu) == ["TLS"]
    assert c.get_certificate().x5t_s256 == cert.x5t_s256


def test_invalid_client_still_evicts_and_mints_exactly_once(warm, emu):
    c, old = warm
    emu.inject("token", Fault(kind="invalid_client", times=1))
    assert c.acquire_token(RESOURCE).x5t_s256 != old.x5t_s256
    assert emu.count("issuecredential") == 1 and _tokens(emu) == ["POST", "POST"]


# --- 11.3: request() refuses anything but https before any connection ------------------------

class Listener:
    """A plain TCP listener on 127.0.0.1 that records every byte any client sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)  # accept() wakes up to see close()
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(1.0)
                try:
                    while chunk := conn.recv(65536):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("scheme", ["http", "HTTP", "ftp", ""])
def test_request_refuses_a_non_https_url_before_any_connection(warm, emu, scheme):
    c, _ = warm
    listener = Listener()
    try:
        url = (f"{scheme}://" if scheme else "//") + f"127.0.0.1:{listener.port}/resource"
        with pytest.raises(ValueError, match=r"needs an https:// URL.*refusing before any"):
            c.request("GET", url, resource=RESOURCE)
        time.sleep(0.2)  # a connection, had one been made, would have been accepted by now
    finally:
        listener.close()
    assert listener.connections == 0 and bytes(listener.received) == b""
    assert emu.count("token") == 0  # no token was even acquired


def test_request_over_https_still_works_and_sends_the_pop_header(warm, emu):
    c, _cert = warm
    resp = c.request("GET", f"{emu.ests_url}/resource", resource=RESOURCE,
                     headers={"authorization": "Bearer caller-supplied"})
    assert resp.status == 200
    (req,) = [r for r in emu.requests if r.endpoint == "resource"]
    auths = [v for k, v in req.headers.items() if k.lower() == "authorization"]
    assert len(auths) == 1 and auths[0].startswith("mtls_pop ")


# --- 11.8: an overall deadline on each ESTS request ------------------------------------------

@pytest.mark.parametrize("kind", ["trickle_body", "trickle_headers"])
def test_an_ests_that_trickles_its_answer_fails_within_the_total_timeout(make_client, emu, kind):
    c = make_client(ests_timeouts=Timeouts(connect=5.0, read=5.0, total=1.0))
    c.get_certificate()
    emu.inject("token", Fault(kind=kind, delay=0.2))  # one byte / one header line per 0.2 s
    t0 = time.monotonic()
    with pytest.raises(TokenError, match=r"did not answer within ests_timeouts.total \(1 s\)"):
        c.acquire_token(RESOURCE)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 1.0 + SLACK, elapsed
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1  # no retry, no evict
    assert c.acquire_token(RESOURCE).source == "identity_provider"  # the pool recovers


def test_the_total_timeout_defaults_to_sixty_seconds(make_client):
    assert make_client()._tokens()._timeouts.total == 60.0


def test_the_total_timeout_does_not_fire_after_a_prompt_answer(make_client, emu):
    c = make_client(ests_timeouts=Timeouts(connect=5.0, read=30.0, total=0.3))
    c.acquire_token(RESOURCE)
    time.sleep(0.5)  # the armed timer, had it not been disarmed, would shut the pooled socket
    assert c.acquire_token("https://storage.azure.com").source == "identity_provider"
    assert emu.count("token") == 2


# --- 10.5 (ESTS half): the headers of a token request ----------------------------------------

def test_token_request_carries_the_reference_client_headers(warm, emu):
    c, _cert = warm
    c.acquire_token(RESOURCE)
    c.acquire_token("https://storage.azure.com")
    first, second = [r for r in emu.requests if r.endpoint == "token"]
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert set(headers) == {
        "host", "accept-encoding", "user-agent", "content-length", "content-type",
        "client-request-id", "return-client-request-id", "x-client-sku", "x-client-ver",
        "x-client-os",
    }
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["return-client-request-id"] == "true"
    assert headers["x-client-sku"] == "msicert.python"
    assert headers["x-client-ver"] == msicert.__version__
    assert headers["x-client-os"] == sys.platform
    cid = headers["client-request-id"]
    assert str(uuid.UUID(cid)) == cid and uuid.UUID(cid).version == 4
    assert {k.lower(): v for k, v in second.headers.items()}["client-request-id"] != cid
    names = list(first.headers)  # spelled as MSAL.NET spells them (MsalIdHelper.cs)
    assert {"x-client-SKU", "x-client-Ver", "x-client-OS"} <= set(names)


def test_an_ests_error_names_the_client_request_id_that_was_sent(warm, emu):
    c, _ = warm
    emu.inject("token", Fault(status=400, body=b'{"error":"invalid_scope"}'))
    with pytest.raises(TokenError) as info:
        c.acquire_token(RESOURCE)
    (req,) = [r for r in emu.requests if r.endpoint == "token"]
    sent = {k.lower(): v for k, v in req.headers.items()}["client-request-id"]
    assert info.value.correlation_id == sent
    assert re.fullmatch(r"[0-9a-f-]{36}", sent)


def test_the_emulator_echoes_client_request_id_when_asked_as_ests_does(warm, emu):
    c, cert = warm
    pool = c._tokens().tls.pool(cert)
    url = f"{cert.mtls_endpoint}/{cert.tenant_id}/oauth2/v2.0/token"
    form = (f"grant_type=client_credentials&client_id={cert.client_id}"
            "&scope=https%3A%2F%2Fvault.azure.net%2F.default&token_type=mtls_pop")
    asked = pool.request("POST", url, body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "client-request-id": "0d9c4a33-6a5e-4d1b-9c1e-2f3a4b5c6d7e",
        "return-client-request-id": "true"})
    silent = pool.request("POST", url, body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "client-request-id": "0d9c4a33-6a5e-4d1b-9c1e-2f3a4b5c6d7e"})
    assert asked.status == silent.status == 200
    assert asked.headers["client-request-id"] == "0d9c4a33-6a5e-4d1b-9c1e-2f3a4b5c6d7e"
    assert "client-request-id" not in silent.headers
    assert emu.violations == []  # a request without the x-client-* headers is not refused
