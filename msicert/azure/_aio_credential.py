"""``AsyncMtlsPopCredential``: azure-core's ``AsyncTokenCredential``, minting in a thread."""

from __future__ import annotations

import asyncio
from typing import Any

from azure.core.credentials import AccessToken as AzureAccessToken
from azure.core.credentials import AccessTokenInfo, TokenRequestOptions

from .._client import ManagedIdentityClient
from ._credential import MtlsPopCredential

__all__ = ["AsyncMtlsPopCredential"]


class AsyncMtlsPopCredential:
    """The async twin of :class:`~msicert.azure.MtlsPopCredential` (same tenant rule, same
    tokens, same client), for the ``.aio`` clients.

    Every call runs the client's blocking work (store, IMDS mint, ESTS) in a worker thread:
    the event loop keeps running while a certificate is minted. Prefer
    :meth:`get_token_info`; azure-core's ``AccessToken`` shows the token in its repr.
    """

    def __init__(self, client: ManagedIdentityClient | None = None, **client_kwargs: Any) -> None:
        self._sync = MtlsPopCredential(client, **client_kwargs)
        self.client = self._sync.client

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """An ``AccessTokenInfo`` with ``token_type == "mtls_pop"`` (repr hides the token)."""
        return await asyncio.to_thread(self._sync.get_token_info, *scopes, options=options)

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AzureAccessToken:
        """An azure-core ``AccessToken`` (its repr shows the token: prefer get_token_info)."""
        return await asyncio.to_thread(self._sync.get_token, *scopes, claims=claims,
                                       tenant_id=tenant_id, enable_cae=enable_cae)

    async def close(self) -> None:
        """Close the client when this credential built it."""
        await asyncio.to_thread(self._sync.close)

    async def __aenter__(self) -> AsyncMtlsPopCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
