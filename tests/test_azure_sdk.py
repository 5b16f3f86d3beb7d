"""Real Azure SDK clients (azure-keyvault-secrets, azure-storage-blob, azure-core's
PipelineClient) built with ``**sdk_kwargs(client)`` and nothing else, against the emulator's
Key Vault and Blob stand-ins over real mTLS on 127.0.0.1. The stand-ins refuse any request
whose scheme is not mtls_pop, whose token's aud is not theirs, or whose cnf is not the
presented certificate (a refusal is a 401 and a recorded violation)."""

from __future__ import annotations

import io
import json

import pytest
from azure.core import PipelineClient
from azure.core.exceptions import ClientAuthenticationError, ResponseNotReadError
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.rest import HttpRequest
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import BlobServiceClient

from msicert import Backoff
from msicert.azure import IssuedTokens, MtlsTransport, sdk_kwargs
from msicert.emulator import decode_token_payload

DATA = bytes(range(256)) * 40  # 10 KiB


pytestmark = pytest.mark.usefixtures("cold_azure_resources")


def _auth(emu, endpoint: str) -> list[str]:
    return [r.headers.get("Authorization", "") for r in emu.requests if r.endpoint == endpoint]


def _bound_to(header: str) -> str:
    return decode_token_payload(header.split(" ", 1)[1])["cnf"]["x5t#S256"]


def test_secret_client_in_one_line_writes_first_then_reads(make_client, emu):
    client = make_client()
    secrets = SecretClient(emu.vault_url, **sdk_kwargs(client))
    assert secrets.set_secret("db-password", "hunter2").value == "hunter2"  # a write first
    assert secrets.get_secret("db-password").value == "hunter2"
    challenge, put, _ = [r for r in emu.requests if r.endpoint == "keyvault"]
    assert "Authorization" not in challenge.headers and challenge.body == b""
    assert json.loads(put.body) == {"value": "hunter2"}  # the body came back after the challenge
    assert [a.split(" ")[0] for a in _auth(emu, "keyvault")] == ["", "mtls_pop", "mtls_pop"]
    assert _bound_to(put.headers["Authorization"]) == client.get_certificate().x5t_s256
    assert (emu.count("issuecredential"), emu.count("token")) == (1, 1)
    assert emu.violations == []


def test_secret_client_warm_reuses_the_store_and_the_challenge(make_client, emu):
    SecretClient(emu.vault_url, **sdk_kwargs(make_client())).set_secret("a", "1")
    emu.reset()
    warm = SecretClient(emu.vault_url, **sdk_kwargs(make_client()))  # new client, same store
    assert warm.set_secret("a", "2").value == "2"
    assert warm.get_secret("a").value == "2"
    assert emu.count("keyvault") == 2  # the challenge is cached per vault: no extra request
    # the certificate from the store, the token from the shared token cache: no ESTS call
    assert (emu.count("issuecredential"), emu.count("token")) == (0, 0)
    assert emu.violations == []


def test_blob_service_client_in_one_line_uploads_first_then_reads(make_client, emu):
    client = make_client()
    service = BlobServiceClient(emu.blob_url, **sdk_kwargs(client))
    service.create_container("box")  # a write first
    blob = service.get_blob_client("box", "data.bin")
    blob.upload_blob(DATA)
    assert blob.get_blob_properties().size == len(DATA)
    assert blob.download_blob().readall() == DATA
    sink = io.BytesIO()
    assert blob.download_blob().readinto(sink) == len(DATA) and sink.getvalue() == DATA
    assert set(a.split(" ")[0] for a in _auth(emu, "blob")) == {"mtls_pop"}
    assert emu.count("token") == 1 and emu.violations == []


def test_blob_block_upload_and_ranged_concurrent_download(make_client, emu):
    service = BlobServiceClient(
        emu.blob_url, max_single_put_size=1024, max_block_size=1024, max_single_get_size=1024,
        max_chunk_get_size=1024, **sdk_kwargs(make_client()))
    service.create_container("box")
    blob = service.get_blob_client("box", "big.bin")
    blob.upload_blob(DATA, max_concurrency=2)
    puts = [r.query.get("comp", "") for r in emu.requests if r.method == "PUT"]
    assert puts.count("block") == 10 and puts.count("blocklist") == 1
    emu.reset()
    assert blob.download_blob(max_concurrency=2).readall() == DATA
    ranges = sorted(r.headers["x-ms-range"] for r in emu.requests if r.method == "GET")
    assert len(ranges) == 10 and "bytes=0-1023" in ranges and "bytes=9216-10239" in ranges
    sink = io.BytesIO()
    assert blob.download_blob(max_concurrency=2).readinto(sink) == len(DATA)
    assert sink.getvalue() == DATA and emu.violations == []


def test_pipeline_client_with_azure_cores_own_bearer_policy(make_client, emu):
    kw = sdk_kwargs(make_client())
    scope = emu.resources.vault_resource + "/.default"
    pipeline = PipelineClient(emu.vault_url, policies=[
        BearerTokenCredentialPolicy(kw["credential"], scope)], transport=kw["transport"])
    put = HttpRequest("PUT", f"{emu.vault_url}/secrets/x?api-version=7.6", json={"value": "v"})
    assert pipeline.send_request(put).status_code == 200  # a write first
    got = pipeline.send_request(HttpRequest("GET", f"{emu.vault_url}/secrets/x?api-version=7.6"))
    assert got.json()["value"] == "v"
    assert put.headers["Authorization"].startswith("Bearer ")  # the caller's copy is untouched
    assert [a.split(" ")[0] for a in _auth(emu, "keyvault")] == ["mtls_pop", "mtls_pop"]
    assert emu.count("token") == 1 and emu.violations == []


def test_a_header_msicert_did_not_issue_is_sent_as_it_is(make_client, emu):
    transport = MtlsTransport(make_client())
    for value in ("Bearer not-a-token-msicert-issued", "Basic dXNlcjpwdw==", "mtls_pop other"):
        request = HttpRequest("GET", f"{emu.vault_url}/secrets/x?api-version=7.6",
                              headers={"Authorization": value})
        assert transport.send(request).status_code == 401
        assert _auth(emu, "keyvault")[-1] == value
    assert len(emu.violations) == 3  # the stand-in refused each


def test_an_expired_entry_of_the_issued_map_is_left_alone(make_client, emu):
    client = make_client()
    token = sdk_kwargs(client)["credential"].get_token_info("https://x.example").token
    now = [0.0]
    issued = IssuedTokens(max_entries=2, clock=lambda: now[0])
    issued.add(token, "https://x.example", "thumb", expires_on=100)
    assert issued.lookup(token) is not None
    now[0] = 100.0
    assert issued.lookup(token) is None and len(issued) == 0


def test_the_issued_map_is_bounded_expired_entries_go_first_then_the_oldest():
    now = [0.0]
    issued = IssuedTokens(max_entries=3, clock=lambda: now[0])
    issued.add("a", "r", "t", expires_on=1000)
    issued.add("b", "r", "t", expires_on=10)
    issued.add("c", "r", "t", expires_on=1000)
    now[0] = 20.0
    issued.add("d", "r", "t", expires_on=1000)  # full: the expired "b" goes, "a" stays
    assert [issued.lookup(t) is not None for t in "abcd"] == [True, False, True, True]
    issued.add("e", "r", "t", expires_on=1000)  # full again, none expired: the oldest goes
    assert [issued.lookup(t) is not None for t in "acde"] == [False, True, True, True]
    assert len(issued) == 3 and "a" not in repr(issued).replace("at most", "")


def test_the_identitys_own_tenant_is_accepted_another_is_refused_naming_both(
        make_client, emu):
    credential = sdk_kwargs(make_client())["credential"]
    own = credential.get_token_info(emu.resources.vault_resource,
                                    options={"tenant_id": emu.tenant_id.upper()})
    assert own.token_type == "mtls_pop"
    with pytest.raises(ClientAuthenticationError) as info:
        credential.get_token("https://vault.azure.net", tenant_id="other-tenant")
    assert emu.tenant_id in str(info.value) and "other-tenant" in str(info.value)
    assert emu.count("token") == 1  # no token was requested for the other tenant


def test_a_vault_in_another_tenant_gets_no_token(make_client, emu):
    emu.resources.vault.challenge_tenant_id = "72f988bf-0000-0000-0000-000000000000"
    secrets = SecretClient(emu.vault_url, **sdk_kwargs(make_client()))
    with pytest.raises(ClientAuthenticationError, match="72f988bf-0000") as info:
        secrets.set_secret("a", "b")
    assert emu.tenant_id in str(info.value)
    assert emu.count("token") == 0 and emu.count("keyvault") == 1


def test_a_streamed_response_is_read_only_when_iterated(make_client, emu):
    client = make_client()
    service = BlobServiceClient(emu.blob_url, **sdk_kwargs(client))
    service.create_container("box")
    service.get_blob_client("box", "s").upload_blob(DATA)
    token = sdk_kwargs(client)["credential"].get_token_info("https://storage.azure.com").token
    transport = MtlsTransport(client, data_block_size=1000)
    response = transport.send(HttpRequest(
        "GET", f"{emu.blob_url}/box/s", headers={"Authorization": f"Bearer {token}",
                                                 "x-ms-version": "2025-01-05"}), stream=True)
    assert response.status_code == 200
    with pytest.raises(ResponseNotReadError):
        response.content  # noqa: B018 - nothing was read yet
    chunks = list(response.iter_bytes())
    assert b"".join(chunks) == DATA and max(map(len, chunks)) <= 1000 and len(chunks) >= 11
    assert response.is_closed


# --- rotation between token acquisition and send: no 401, no extra request -------------------
class _Clock:
    """The client's clock; moving it past renew_after makes the next call renew."""

    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


def _rotate(kind: str, client, clock: _Clock) -> None:
    old = client.get_certificate()
    if kind == "purge":
        client.purge()
    elif kind == "eviction":
        client.invalidate(old.x5t_s256)
    else:  # renewal: past renew_after, the next call mints a new certificate
        clock.offset = old.renew_after_ts - clock._time() + 1.0


def _three_clients(emu, kw):
    scope = emu.resources.vault_resource + "/.default"
    pipeline = PipelineClient(emu.vault_url, policies=[
        BearerTokenCredentialPolicy(kw["credential"], scope)], transport=kw["transport"])

    def generic(value: str) -> None:
        put = HttpRequest("PUT", f"{emu.vault_url}/secrets/g?api-version=7.6",
                          json={"value": value})
        assert pipeline.send_request(put).status_code == 200

    secrets = SecretClient(emu.vault_url, **kw)
    service = BlobServiceClient(emu.blob_url, **kw)
    service.create_container("box")
    blob = service.get_blob_client("box", "r")
    return {
        "keyvault": lambda v: secrets.set_secret("s", v),
        "blob": lambda v: blob.upload_blob(v.encode(), overwrite=True),
        "generic": generic,
    }


@pytest.mark.parametrize("kind", ["purge", "eviction", "renewal"])
def test_a_rotation_between_token_and_send_costs_no_401(make_client, emu, kind):
    clock = _Clock()
    # mint_backoff: the fake clock leaves each new certificate past renew_after too
    client = make_client(clock=clock, mint_backoff=Backoff(30.0, 30.0))
    calls = _three_clients(emu, sdk_kwargs(client))
    for name, call in calls.items():
        call(f"{name}-before")  # each SDK policy now caches a token bound to the first cert
    first = client.get_certificate().x5t_s256
    before = {e: emu.count(e) for e in ("keyvault", "blob", "token", "issuecredential")}
    _rotate(kind, client, clock)
    for name, call in calls.items():
        call(f"{name}-after")
    second = client.get_certificate().x5t_s256
    assert second != first
    assert emu.count("issuecredential") - before["issuecredential"] == 1
    assert emu.count("token") - before["token"] == 2  # one per resource: vault, storage
    assert emu.count("keyvault") - before["keyvault"] == 2  # generic + SecretClient: 1 each
    assert emu.count("blob") - before["blob"] == 1
    assert emu.violations == []  # zero 401s: every token matched its connection's cert
    after = [r for r in emu.requests if r.endpoint in ("keyvault", "blob")][-3:]
    assert {_bound_to(r.headers["Authorization"]) for r in after} == {second}


# --- failures keep the token out of every frame's locals ------------------------------------
def test_a_failed_send_leaves_no_token_in_any_frame(make_client, emu):
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    from msicert.emulator import Fault
    from tests.test_token_frames import _frames

    client = make_client()
    token = sdk_kwargs(client)["credential"].get_token_info("https://vault.azure.net").token
    emu.inject("resource", Fault(kind="close_handshake"))  # fails inside urllib3
    request = HttpRequest("GET", f"{emu.ests_url}/resource",
                          headers={"Authorization": f"Bearer {token}"})
    with pytest.raises((ServiceRequestError, ServiceResponseError)) as info:
        MtlsTransport(client).send(request)
    frames = [f for f in _frames(info.value) if f.f_code.co_filename != __file__]
    names = [f.f_code.co_name for f in frames]
    assert "urlopen" in names and "send" in names  # urllib3's frames and ours are walked
    leaks = [f"{f.f_code.co_name}:{name}" for f in frames for name, value in f.f_locals.items()
             if token in repr(value) or token.split(".")[1] in repr(value)]
    assert leaks == []
    assert request.headers["Authorization"] == f"Bearer {token}"  # the caller's copy is kept


def test_winhttp_responses_stream_through_the_same_path_fake_native_stream(make_client, emu):
    """WinHTTP cannot run here: its response class is driven by a stand-in for the native
    HttpStream (read(amt) / close), as the Windows transport hands it to msicert.azure."""
    from msicert.azure._responses import make_response
    from msicert.backends.windows._winhttp_transport import _Response

    class FakeHttpStream:  # the native boundary: WinHttpReadData over a buffer
        def __init__(self) -> None:
            self.buffer, self.reads, self.closed = io.BytesIO(DATA), [], False

        def read(self, amt=None):
            self.reads.append(amt)
            return self.buffer.read(amt)

        def close(self) -> None:
            self.closed = True

    stream = FakeHttpStream()
    raw = _Response(200, {"Content-Length": str(len(DATA))}, stream=stream)
    response = make_response(HttpRequest("GET", "https://x.example/b"), raw, stream=True,
                             block_size=4096)
    assert stream.reads == []  # nothing read before the caller iterates
    assert b"".join(response.iter_bytes()) == DATA
    assert set(stream.reads) == {4096} and stream.closed and response.is_closed


def test_the_stand_ins_refuse_another_audience_and_another_certificates_token(
        make_client, emu, tmp_path):
    mine = make_client()
    other = make_client(store_dir=str(tmp_path / "other"))  # its own certificate
    vault_token = sdk_kwargs(mine)["credential"].get_token_info(
        emu.resources.vault_resource).token
    headers = {"Authorization": f"mtls_pop {vault_token}", "x-ms-version": "2025-01-05"}
    wrong_aud = MtlsTransport(mine).send(HttpRequest("HEAD", f"{emu.blob_url}/box/b",
                                                     headers=headers))
    assert wrong_aud.status_code == 401
    wrong_cert = MtlsTransport(other).send(HttpRequest(
        "GET", f"{emu.vault_url}/secrets/x?api-version=7.6", headers=headers))
    assert wrong_cert.status_code == 401
    assert "Bearer authorization=" in wrong_cert.headers["WWW-Authenticate"]
    assert emu.violations == [
        f"blob: access token is for {emu.resources.vault_resource!r}, not "
        "'https://storage.azure.com'",
        "keyvault: access token is bound to another certificate (cnf.x5t#S256 mismatch)"]


def test_another_process_replacing_the_entry_costs_no_401(make_client, emu, store_dir):
    """The client holds the old certificate in memory (no connection yet) while another
    process deletes the entry and mints a new one: the SDK calls use the store's new one."""
    from tests.conftest import run_cli

    client = make_client()
    first = client.get_certificate().x5t_s256
    env = {"MSICERT_STORE_DIR": store_dir, "AZURE_POD_IDENTITY_AUTHORITY_HOST": emu.imds_url}
    assert run_cli("purge", env=env).returncode == 0  # another process: delete, then mint
    assert run_cli("cert", env=env).returncode == 0
    emu.reset()
    calls = _three_clients(emu, sdk_kwargs(client))
    for name, call in calls.items():
        call(name)
    second = client.get_certificate().x5t_s256
    assert second != first and second == client.status().x5t_s256
    assert emu.count("issuecredential") == 0  # the other process's certificate is used
    assert emu.count("keyvault") == 3 and emu.count("blob") == 2  # challenge+2; create+put
    assert emu.violations == []
    used = [r for r in emu.requests if r.endpoint in ("keyvault", "blob")
            and "Authorization" in r.headers]
    assert {_bound_to(r.headers["Authorization"]) for r in used} == {second}
