"""Azure SDK integration (``pip install "msicert[azure]"``, ``"msicert[azure-aio]"`` for aiohttp).

One line per client: :func:`sdk_kwargs` gives the ``credential=`` and ``transport=`` every
Azure SDK client accepts, sharing one :class:`~msicert.ManagedIdentityClient`::

    from azure.keyvault.secrets import SecretClient
    from msicert import ManagedIdentityClient
    from msicert.azure import sdk_kwargs

    client = ManagedIdentityClient()
    secrets = SecretClient("https://myvault.vault.azure.net", **sdk_kwargs(client))

An mtls_pop token is only accepted over a TLS connection that presents the certificate it is
bound to: :class:`MtlsTransport` presents it and writes ``Authorization: mtls_pop <token>``
for the tokens :class:`MtlsPopCredential` issued (azure-core's policies write ``Bearer``).
:func:`sdk_kwargs_async` does the same for the ``.aio`` clients (:class:`AsyncMtlsPopCredential`,
:class:`AsyncMtlsTransport`). :class:`MtlsPopPolicy` remains for hand-built pipelines.

This package imports azure-core (and, for the async transport on POSIX, aiohttp, only when it
is used); ``import msicert`` imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._credential import MtlsPopCredential, MtlsTokenInfo, resource_for_scopes
from ._issued import IssuedTokens
from ._kwargs import sdk_kwargs, sdk_kwargs_async
from ._policy import MtlsPopPolicy
from ._transport import MtlsTransport

if TYPE_CHECKING:
    from ._aio_credential import AsyncMtlsPopCredential
    from ._aio_transport import AsyncMtlsTransport

__all__ = ["AsyncMtlsPopCredential", "AsyncMtlsTransport", "IssuedTokens", "MtlsPopCredential",
           "MtlsPopPolicy", "MtlsTokenInfo", "MtlsTransport", "resource_for_scopes",
           "sdk_kwargs", "sdk_kwargs_async"]


def __getattr__(name: str) -> Any:
    # The async names import asyncio machinery (and, when used on POSIX, aiohttp): on demand.
    if name == "AsyncMtlsPopCredential":
        from ._aio_credential import AsyncMtlsPopCredential

        return AsyncMtlsPopCredential
    if name == "AsyncMtlsTransport":
        from ._aio_transport import AsyncMtlsTransport

        return AsyncMtlsTransport
    raise AttributeError(f"module 'msicert.azure' has no attribute {name!r}")
