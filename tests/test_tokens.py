"""The mTLS handshake, mtls_pop tokens, the token cache, and what a refusal costs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import threading
import time
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from msicert import Backoff, TokenError
from msicert.backends.posix._ssl_transport import build_context
from msicert.emulator import Fault, decode_token_payload
from tests.conftest import cli_json

RESOURCE = "https://vault.azure.net"


def test_token_request_follows_the_wire_contract(make_client, emu):
    c = make_client()
    token = c.acquire_token(RESOURCE + "/")
    cert = c.get_certificate()
    (req,) = [r for r in emu.requests if r.endpoint == "token"]
    assert req.method == "POST"
    assert req.path == f"/{cert.tenant_id}/oauth2/v2.0/token"
    form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
    assert form == {"grant_type": "client_credentials", "client_id": cert.client_id,
                    "scope": "https://vault.azure.net/.default", "token_type": "mtls_pop"}
    assert token.token_type == "mtls_pop" and token.source == "identity_provider"
    assert token.x5t_s256 == cert.x5t_s256
    assert decode_token_payload(token.access_token)["cnf"]["x5t#S256"] == cert.x5t_s256
    # 3600 s asked, but never past the certificate's NotAfter (3540 s away: backdate 60 s)
    assert token.expires_on == int(cert.not_after_ts) < time.time() + 3600
    assert emu.violations == []
    assert "access_token" not in repr(token) and token.access_token not in repr(token)


def test_claims_are_sent_and_their_token_replaces_the_cached_one(make_client, emu):
    c = make_client()
    old = c.acquire_token(RESOURCE)
    claims = '{"access_token":{"xms_cc":{"values":["cp1"]}}}'
    t = c.acquire_token(RESOURCE, claims=claims)
    assert t.source == "identity_provider" and t.access_token != old.access_token
    last = [r for r in emu.requests if r.endpoint == "token"][-1]
    assert parse_qs(last.body.decode())["claims"] == [claims]
    again = c.acquire_token(RESOURCE)
    assert again.source == "cache" and again.access_token == t.access_token
    assert emu.count("token") == 2


def test_one_ssl_context_and_pool_per_certificate(make_client, emu):
    c = make_client()
    c.acquire_token(RESOURCE)
    c.acquire_token("https://management.azure.com")
    c.acquire_token("https://storage.azure.com")
    tls = c._tokens().tls
    cert = c.get_certificate()
    assert len(tls._entries) == 1
    ctx = tls.context(cert)
    assert ctx is tls.context(cert)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert tls.pool(cert) is tls.pool(cert)


def test_token_is_served_from_cache_until_refresh_in(make_client, emu):
    now = [time.time()]
    c = make_client(clock=lambda: now[0])
    emu.lifetime, emu.token_lifetime = 86400.0, 3600.0  # refresh_in = 1800; cert stays fresh
    first = c.acquire_token(RESOURCE)
    second = c.acquire_token(RESOURCE)
    assert (first.source, second.source) == ("identity_provider", "cache")
    assert second.access_token == first.access_token
    assert emu.count("token") == 1
    now[0] += 1799
    assert c.acquire_token(RESOURCE).source == "cache"
    now[0] += 2
    assert c.acquire_token(RESOURCE).source == "identity_provider"
    assert emu.count("token") == 2


def test_expires_in_as_numeric_string_is_accepted(make_client, emu):
    emu.inject("token", Fault(kind="expires_in_string"))
    emu.lifetime = 7200.0
    t = make_client().acquire_token(RESOURCE)
    assert abs(t.expires_on - (time.time() + 3600)) < 5


def test_wrong_token_type_is_a_token_error(make_client, emu):
    emu.inject("token", Fault(kind="wrong_token_type"))
    with pytest.raises(TokenError, match="mtls_pop"):
        make_client().acquire_token(RESOURCE)


def test_cached_token_never_outlives_the_certificate(make_client, emu):
    emu.lifetime, emu.backdate, emu.token_lifetime = 1000.0, 0.0, 86400.0
    now = [time.time()]
    c = make_client(clock=lambda: now[0], mint_backoff=Backoff(1e9, 1e9))
    t = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    assert t.refresh_on <= cert.not_after_ts


def test_after_rotation_the_token_is_bound_to_the_new_certificate(make_client, emu):
    emu.lifetime = 1000.0
    now = [time.time()]
    c = make_client(clock=lambda: now[0])
    old_token = c.acquire_token(RESOURCE)
    old = c.get_certificate()
    emu.lifetime = 100000.0
    now[0] = old.renew_after_ts + 1
    new_token = c.acquire_token(RESOURCE)
    new = c.get_certificate()
    assert new.x5t_s256 != old.x5t_s256
    assert new_token.x5t_s256 == new.x5t_s256 != old_token.x5t_s256
    assert decode_token_payload(new_token.access_token)["cnf"]["x5t#S256"] == new.x5t_s256
    assert new_token.source == "identity_provider"
    assert emu.count("token") == 2


def test_invalid_client_once_remints_exactly_once_and_succeeds(make_client, emu):
    c = make_client()
    old = c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", times=1))
    t = c.acquire_token(RESOURCE)
    new = c.get_certificate()
    assert new.x5t_s256 != old.x5t_s256 and t.x5t_s256 == new.x5t_s256
    assert emu.count("issuecredential") == 2
    assert emu.count("token") == 2
    assert make_client().get_certificate().x5t_s256 == new.x5t_s256  # store holds the new one


def test_invalid_client_with_a_code_no_certificate_fixes_surfaces_at_once_without_a_mint(
        make_client, emu):
    c = make_client()
    c.get_certificate()
    emu.inject("token", Fault(kind="invalid_client", error_codes=(7000215,)))
    with pytest.raises(TokenError) as info:
        c.acquire_token(RESOURCE)
    err = info.value
    assert err.error == "invalid_client" and err.status == 401
    assert err.error_description.startswith("AADSTS7000215") and err.correlation_id
    assert emu.count("issuecredential") == 1 and emu.count("token") == 1


def test_rejected_handshake_remints_and_retries_once(make_client, emu):
    c = make_client()
    old = c.get_certificate()
    emu.inject("token", Fault(kind="reject_certificate", times=1))  # an alert about our cert
    t = c.acquire_token(RESOURCE)
    assert t.x5t_s256 != old.x5t_s256
    assert emu.count("issuecredential") == 2


def test_rejected_handshake_twice_is_a_token_error(make_client, emu):
    emu.inject("token", Fault(kind="reject_certificate", times=2))
    with pytest.raises(TokenError, match="rejected the client certificate twice"):
        make_client().acquire_token(RESOURCE)


def test_ests_5xx_is_retried_once_after_one_second(make_client, emu):
    waits = []
    c = make_client(sleep=waits.append)
    emu.inject("token", Fault(status=503, times=1))
    assert c.acquire_token(RESOURCE).source == "identity_provider"
    assert waits == [1.0] and emu.count("token") == 2
    emu.inject("token", Fault(status=500, times=2))
    with pytest.raises(TokenError) as info:
        c.acquire_token("https://other.example")
    assert info.value.status == 500 and emu.count("token") == 4


def test_two_hundred_parallel_acquires_make_one_ests_call(make_client, emu):
    c = make_client()
    c.get_certificate()
    emu.inject("token", Fault(delay=0.2))
    barrier = threading.Barrier(200)
    results: list[str] = []

    def work():
        barrier.wait()
        results.append(c.acquire_token(RESOURCE).access_token)

    threads = [threading.Thread(target=work) for _ in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == 200 and len(set(results)) == 1
    assert emu.count("token") == 1


def test_resource_call_over_mtls_with_pop_header(make_client, emu):
    c = make_client()
    resp = c.request("GET", f"{emu.ests_url}/resource", resource=RESOURCE)
    assert resp.status == 200
    body = json.loads(resp.data)
    assert body["ok"] is True and body["x5t#S256"] == c.get_certificate().x5t_s256
    (req,) = [r for r in emu.requests if r.endpoint == "resource"]
    auth = req.headers.get("Authorization") or req.headers.get("authorization")
    assert auth.startswith("mtls_pop ")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connecting is refused


def _bad_server(plain_http: bool) -> tuple[socket.socket, int]:
    """A listener that answers the TLS hello with a plain HTTP response, or closes at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                if plain_http:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


@pytest.mark.parametrize("fault", ["refused", "plain-http", "closed"])
def test_a_resource_that_cannot_be_reached_is_a_connection_error_naming_the_url(
        make_client, emu, fault):
    c = make_client()
    token = c.acquire_token(RESOURCE)
    srv = None
    if fault == "refused":
        url, words = f"https://127.0.0.1:{_closed_port()}/x", "refused"
    else:
        srv, port = _bad_server(plain_http=fault == "plain-http")
        url, words = f"https://127.0.0.1:{port}/x", "SSLError"
    try:
        with pytest.raises(ConnectionError) as err:
            c.request("GET", url, resource=RESOURCE, timeout=10)
    finally:
        if srv is not None:
            srv.close()
    text = str(err.value)
    assert text.startswith(f"{url} could not be reached: ") and words in text
    assert "object at 0x" not in text and token.access_token not in text
    assert err.value.__cause__ is not None  # urllib3's exception, for who wants its details
    assert c.acquire_token(RESOURCE).access_token == token.access_token  # nothing dropped


def test_cli_token_json(emu, store_dir):
    out = cli_json("token", "--resource", RESOURCE, "--store-dir", store_dir)
    assert out["token_type"] == "mtls_pop" and out["source"] == "identity_provider"
    assert isinstance(out["expires_on"], int)
    cert = cli_json("cert", "--store-dir", store_dir)
    assert out["x5t_s256"] == cert["x5t_s256"]
    assert decode_token_payload(out["access_token"])["cnf"]["x5t#S256"] == cert["x5t_s256"]


# --- an independent mTLS peer: openssl s_server -------------------------------------------

def _server_material(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s_server test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp_path / "ca.pem"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_handshake_presents_the_stored_certificate_and_key_to_openssl_s_server(
        make_client, emu, tmp_path, monkeypatch):
    cert = make_client().get_certificate()
    ca = _server_material(tmp_path)
    port = _free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(tmp_path / "srv.pem"),
         "-key", str(tmp_path / "srv.key"), "-Verify", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while True:  # wait for the listener (a bare TCP probe is logged and ignored)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "openssl s_server did not start"
                time.sleep(0.05)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        ctx = build_context(cert)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"hello from msicert\n")
            time.sleep(0.5)
    finally:
        server.kill()
        out, _ = server.communicate(timeout=10)
    text = out.decode(errors="replace")
    assert "Client certificate" in text, text[-2000:]
    assert cert.cert_pem.decode().strip() in text
    assert "hello from msicert" in text
