"""``sdk_kwargs`` / ``sdk_kwargs_async``: what any Azure SDK client needs, in one call."""

from __future__ import annotations

from typing import Any

from .._client import ManagedIdentityClient
from ._credential import MtlsPopCredential
from ._transport import MtlsTransport

__all__ = ["sdk_kwargs", "sdk_kwargs_async"]


def sdk_kwargs(client: ManagedIdentityClient, **transport_kwargs: Any) -> dict[str, Any]:
    """``{"credential": ..., "transport": ...}`` for any synchronous Azure SDK client::

        SecretClient(vault_url, **sdk_kwargs(client))
        BlobServiceClient(account_url, **sdk_kwargs(client))

    The credential (:class:`MtlsPopCredential`) and the transport (:class:`MtlsTransport`,
    built with ``transport_kwargs``) share ``client``: each request presents the current
    binding certificate and carries ``Authorization: mtls_pop <token>``. Closing the SDK
    client leaves ``client`` open.
    """
    return {"credential": MtlsPopCredential(client),
            "transport": MtlsTransport(client, **transport_kwargs)}


def sdk_kwargs_async(client: ManagedIdentityClient, **transport_kwargs: Any) -> dict[str, Any]:
    """The same for the ``.aio`` clients: :class:`AsyncMtlsPopCredential` and
    :class:`AsyncMtlsTransport` (aiohttp with the client's ``SSLContext`` on POSIX, WinHTTP in
    a worker thread with the Windows certificate store). Mints and token requests run in a
    thread, never on the event loop."""
    from ._aio_credential import AsyncMtlsPopCredential
    from ._aio_transport import AsyncMtlsTransport

    return {"credential": AsyncMtlsPopCredential(client),
            "transport": AsyncMtlsTransport(client, **transport_kwargs)}
