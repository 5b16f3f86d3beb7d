"""The ``.aio`` Azure SDK clients with ``**sdk_kwargs_async(client)``, against the emulator's
Key Vault and Blob stand-ins over real mTLS: both ways of AsyncMtlsTransport (aiohttp with
msicert's SSLContext; the threaded way the Windows certificate store uses, here over urllib3),
cold and warm, through a rotation, and a mint that never blocks the event loop."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest
from azure.core import AsyncPipelineClient
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.rest import HttpRequest
from azure.keyvault.secrets.aio import SecretClient
from azure.storage.blob.aio import BlobServiceClient

from msicert.azure import AsyncMtlsTransport, sdk_kwargs_async
from msicert.emulator import Fault, decode_token_payload
from tests.conftest import ROOT, cli_env

DATA = bytes(range(256)) * 40  # 10 KiB
WAYS = [pytest.param(False, id="aiohttp"), pytest.param(True, id="threaded")]


pytestmark = pytest.mark.usefixtures("cold_azure_resources")


def _schemes(emu, endpoint: str) -> list[str]:
    return [r.headers.get("Authorization", "").split(" ")[0] for r in emu.requests
            if r.endpoint == endpoint]


@pytest.mark.parametrize("threaded", WAYS)
def test_async_clients_in_one_line_write_first_then_read(make_client, emu, threaded):
    client = make_client()

    async def run() -> None:
        kw = sdk_kwargs_async(client, threaded=threaded)
        assert kw["transport"].threaded is threaded
        async with SecretClient(emu.vault_url, **kw) as secrets:
            assert (await secrets.set_secret("k", "v1")).value == "v1"
            assert (await secrets.get_secret("k")).value == "v1"
        kw = sdk_kwargs_async(client, threaded=threaded)
        async with BlobServiceClient(emu.blob_url, max_single_get_size=1024,
                                     max_chunk_get_size=1024, **kw) as service:
            await service.create_container("box")
            blob = service.get_blob_client("box", "b")
            await blob.upload_blob(DATA)
            assert (await blob.get_blob_properties()).size == len(DATA)
            assert await (await blob.download_blob(max_concurrency=2)).readall() == DATA
            sink = io.BytesIO()
            assert await (await blob.download_blob()).readinto(sink) == len(DATA)
            assert sink.getvalue() == DATA
        kw = sdk_kwargs_async(client, threaded=threaded)
        scope = emu.resources.vault_resource + "/.default"
        async with AsyncPipelineClient(emu.vault_url, policies=[
                AsyncBearerTokenCredentialPolicy(kw["credential"], scope)],
                transport=kw["transport"]) as pipeline:
            put = HttpRequest("PUT", f"{emu.vault_url}/secrets/g?api-version=7.6",
                              json={"value": "x"})
            assert (await pipeline.send_request(put)).status_code == 200

    asyncio.run(run())
    assert _schemes(emu, "keyvault") == ["", "mtls_pop", "mtls_pop", "mtls_pop"]
    assert set(_schemes(emu, "blob")) == {"mtls_pop"}
    assert emu.count("blob") == 2 + 1 + 10 + 10  # create, upload; properties; 2 x 10 ranges
    assert (emu.count("issuecredential"), emu.count("token")) == (1, 2)
    assert emu.violations == []


@pytest.mark.parametrize("threaded", WAYS)
def test_async_warm_start_and_a_rotation_cost_no_401(make_client, emu, threaded):
    first = make_client()
    first.get_certificate()  # the store is warm
    emu.reset()
    client = make_client()

    async def run() -> tuple[str, str]:
        kw = sdk_kwargs_async(client, threaded=threaded)
        async with SecretClient(emu.vault_url, **kw) as secrets, BlobServiceClient(
                emu.blob_url, **kw) as service:
            await service.create_container("box")
            blob = service.get_blob_client("box", "b")
            await secrets.set_secret("k", "before")
            await blob.upload_blob(b"before")
            old = client.get_certificate().x5t_s256
            await asyncio.to_thread(client.purge)  # rotates: the next use mints anew
            await secrets.set_secret("k", "after")
            await blob.upload_blob(b"after", overwrite=True)
            assert (await secrets.get_secret("k")).value == "after"
            return old, client.get_certificate().x5t_s256

    old, new = asyncio.run(run())
    assert old != new
    assert emu.count("issuecredential") == 1  # warm start: only the rotation minted
    assert emu.count("token") == 4  # vault and storage, before and after
    assert emu.count("keyvault") == 4 and emu.count("blob") == 3  # challenge + 3; no retry
    assert emu.violations == []
    last = [r for r in emu.requests if r.endpoint in ("keyvault", "blob")][-3:]
    assert {decode_token_payload(r.headers["Authorization"].split()[1])["cnf"]["x5t#S256"]
            for r in last} == {new}


@pytest.mark.parametrize("threaded", WAYS)
def test_a_mint_never_blocks_the_event_loop(make_client, emu, threaded):
    client = make_client()
    emu.inject("issuecredential", Fault(delay=1.0))  # IMDS takes a second to issue

    async def run() -> bool:
        kw = sdk_kwargs_async(client, threaded=threaded)
        task = asyncio.create_task(kw["credential"].get_token_info("https://vault.azure.net"))
        saw_mint_in_flight = False
        while not task.done():
            if emu.count("issuecredential") == 1:  # the mint is under way and we still run
                saw_mint_in_flight = True
            await asyncio.sleep(0.01)
        assert (await task).token_type == "mtls_pop"
        return saw_mint_in_flight

    assert asyncio.run(run()) is True


def test_the_async_transport_picks_aiohttp_for_a_file_store_and_threads_otherwise(
        make_client, emu):
    class CertificateStoreLike:  # no directory: its key cannot load into an SSLContext
        directory = None
        description = "CurrentUser\\My"

    assert AsyncMtlsTransport(make_client()).threaded is False
    assert AsyncMtlsTransport(make_client(store=CertificateStoreLike())).threaded is True
    assert AsyncMtlsTransport(make_client(), threaded=True).threaded is True


def test_import_msicert_azure_imports_no_aiohttp():
    code = ("import sys, msicert.azure as a; a.sdk_kwargs; a.MtlsTransport; "
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=cli_env(), cwd=str(ROOT), check=True).stdout
    assert out.strip() == "False"


def test_aiohttp_is_an_extra_and_never_a_core_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any(d.lower().startswith("aiohttp") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("aiohttp") for d in extras["azure-aio"])
    assert not any(d.startswith("aiohttp") for d in extras["azure"])
