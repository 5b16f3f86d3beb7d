"""msicert.azure over WinHTTP with the Windows store's certificate (real Windows: the CI job
installs azure-core through the test extra and starts the emulator; Wine's SChannel cannot
present a CNG key, so these skip there)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from native_testutil import needs_windows, skip_on_wine

pytestmark = [
    needs_windows,
    skip_on_wine("SChannel cannot present a CNG key in the client handshake "
                 "(SEC_E_UNKNOWN_CREDENTIALS); real Windows can"),
    pytest.mark.skipif(not os.environ.get("MSICERT_WINE_IMDS"),
                       reason="no emulator (the Windows CI job starts one)"),
]


@pytest.fixture
def client() -> Iterator[Any]:
    pytest.importorskip("azure.core", reason="azure-core comes with the test extra")
    from msicert import ManagedIdentityClient
    from msicert.wire._retry import RetryPolicy

    made = ManagedIdentityClient(imds_endpoint=os.environ["MSICERT_WINE_IMDS"],
                                 retry=RetryPolicy(scale=0.01))
    made.purge()
    yield made
    made.purge()


def _request(client: Any) -> Any:
    from azure.core.rest import HttpRequest

    from msicert.azure import MtlsPopCredential

    token = MtlsPopCredential(client).get_token_info("https://vault.azure.net").token
    url = f"{client.get_certificate().mtls_endpoint}/resource"
    return HttpRequest("GET", url, headers={"Authorization": f"Bearer {token}"})


def test_the_transport_rewrites_and_streams_over_winhttp(client: Any) -> None:
    from msicert.azure import MtlsTransport

    response = MtlsTransport(client, data_block_size=8).send(_request(client), stream=True)
    chunks = list(response.iter_bytes())
    assert response.status_code == 200 and len(chunks) > 1
    body = json.loads(b"".join(chunks))
    assert body["x5t#S256"] == client.get_certificate().x5t_s256


def test_the_async_transport_runs_winhttp_in_a_thread(client: Any) -> None:
    from msicert.azure import AsyncMtlsTransport

    transport = AsyncMtlsTransport(client)
    assert transport.threaded is True  # the certificate store: no aiohttp

    async def run() -> bytes:
        response = await transport.send(_request(client), stream=True)
        return b"".join([chunk async for chunk in response.iter_bytes()])

    assert json.loads(asyncio.run(run()))["x5t#S256"] == client.get_certificate().x5t_s256
