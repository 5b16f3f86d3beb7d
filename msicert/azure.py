"""Azure SDK integration (``pip install msicert[azure]``): credential, policy and transport.

An mtls_pop token is only accepted over a TLS connection that presents the certificate it is
bound to, so the three go together::

    from azure.core import PipelineClient
    from msicert import ManagedIdentityClient
    from msicert.azure import MtlsPopCredential, MtlsPopPolicy, MtlsTransport

    client = ManagedIdentityClient()
    credential = MtlsPopCredential(client)
    pipeline = PipelineClient(
        "https://myvault.vault.azure.net",
        policies=[MtlsPopPolicy(credential, "https://vault.azure.net/.default")],
        transport=MtlsTransport(client),
    )

This module imports azure-core; ``import msicert`` never does.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, MutableMapping
from typing import Any

from azure.core.credentials import AccessToken as AzureAccessToken
from azure.core.credentials import AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.pipeline.policies._utils import get_challenge_parameter
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.pipeline.transport import HttpResponse as LegacyHttpResponse
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

from ._client import ManagedIdentityClient
from ._errors import MsiCertError
from ._lazylog import LazyLogger

__all__ = ["MtlsPopCredential", "MtlsPopPolicy", "MtlsTransport", "resource_for_scopes"]

log = LazyLogger("msicert")

TOKEN_TYPE = "mtls_pop"


def resource_for_scopes(scopes: tuple[str, ...]) -> str:
    """The resource of exactly one scope, ``/.default`` stripped (as azure-identity's
    ManagedIdentityCredential does: managed identity tokens take one resource, no scopes)."""
    if len(scopes) != 1:
        raise ValueError(f"this credential takes exactly one scope, got {len(scopes)}")
    scope = scopes[0].strip()
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    if not resource:
        raise ValueError(f"scope {scopes[0]!r} names no resource")
    return resource


class MtlsTokenInfo(AccessTokenInfo):
    """``AccessTokenInfo`` of type ``mtls_pop`` that also names the certificate it is bound to."""

    def __init__(self, token: str, expires_on: int, *, refresh_on: int, x5t_s256: str) -> None:
        super().__init__(token, expires_on, token_type=TOKEN_TYPE, refresh_on=refresh_on)
        self.x5t_s256 = x5t_s256

    def __repr__(self) -> str:  # the token text never appears in a repr
        return (f"MtlsTokenInfo(token_type='{TOKEN_TYPE}', expires_on={self.expires_on}, "
                f"refresh_on={self.refresh_on}, x5t_s256='{self.x5t_s256}')")


class MtlsPopCredential:
    """azure-core ``TokenCredential`` and ``SupportsTokenInfo`` giving ``mtls_pop`` tokens.

    ``client`` is the :class:`~msicert.ManagedIdentityClient` to use (share it with
    :class:`MtlsTransport`); without one, a client is built from ``client_kwargs``. Tokens
    are bound to the client's binding certificate and must be sent over a connection that
    presents it. ``tenant_id`` is not supported (a managed identity has one tenant);
    ``claims`` bypasses the token cache.
    """

    def __init__(self, client: ManagedIdentityClient | None = None, **client_kwargs: Any) -> None:
        if client is not None and client_kwargs:
            raise TypeError("give either a client or keyword arguments for one, not both")
        self.client = client if client is not None else ManagedIdentityClient(**client_kwargs)
        self._owns_client = client is None

    def _acquire(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None
                 ) -> MtlsTokenInfo:
        if tenant_id:
            raise ClientAuthenticationError(
                "a managed identity belongs to one tenant; tenant_id is not supported")
        resource = resource_for_scopes(scopes)
        try:
            token = self.client.acquire_token(resource, claims=claims or None)
        except MsiCertError as exc:
            raise ClientAuthenticationError(f"mtls_pop token for {resource}: {exc}") from exc
        return MtlsTokenInfo(token.access_token, token.expires_on,
                             refresh_on=int(token.refresh_on), x5t_s256=token.x5t_s256)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """An ``AccessTokenInfo`` with ``token_type == "mtls_pop"`` and ``refresh_on``."""
        opts = options or {}
        return self._acquire(scopes, opts.get("claims"), opts.get("tenant_id"))

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AzureAccessToken:
        """An azure-core ``AccessToken`` (the type is implied: it is an mtls_pop token)."""
        info = self._acquire(scopes, claims, tenant_id)
        return AzureAccessToken(info.token, info.expires_on)

    def close(self) -> None:
        """Close the client when this credential built it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> MtlsPopCredential:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MtlsPopPolicy(BearerTokenCredentialPolicy):  # type: ignore[type-arg]
    """Pipeline policy sending ``Authorization: mtls_pop <token>``.

    Behaves like azure-core's ``BearerTokenCredentialPolicy`` (HTTPS only, token kept until
    its ``refresh_on``, a 401 with an ``insufficient_claims`` challenge re-acquires once
    with those claims) and also re-acquires when the binding certificate has rotated, since
    a token bound to the old certificate would be refused on the new connection.
    """

    def __init__(self, credential: MtlsPopCredential, *scopes: str, **kwargs: Any) -> None:
        super().__init__(credential, *scopes, **kwargs)
        self._mtls_credential = credential

    @staticmethod
    def _update_headers(headers: MutableMapping[str, str], token: str) -> None:
        headers["Authorization"] = f"{TOKEN_TYPE} {token}"

    @property
    def _need_new_token(self) -> bool:
        if super()._need_new_token:
            return True
        bound = getattr(self._token, "x5t_s256", None)
        if bound is None:
            return False
        current = self._mtls_credential.client.get_certificate().x5t_s256
        if current != bound:
            log.info("binding certificate rotated (%s -> %s); re-acquiring the token", bound,
                     current)
            return True
        return False

    def on_challenge(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]
                     ) -> bool:
        """Re-acquire once with the claims of an ``insufficient_claims`` challenge."""
        headers = response.http_response.headers
        for scheme in (TOKEN_TYPE, "Bearer", "PoP"):
            if get_challenge_parameter(headers, scheme, "error") != "insufficient_claims":
                continue
            encoded = get_challenge_parameter(headers, scheme, "claims")
            if not encoded:
                return False
            try:
                claims = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                log.warning("claims challenge is not base64url JSON; not retrying")
                return False
            log.info("resource answered 401 with a claims challenge; re-acquiring once")
            self.authorize_request(request, *self._scopes, claims=claims)
            return True
        return False


class _Preloaded:
    """Stands in for a live connection: the body is already read."""

    def close(self) -> None:
        """Nothing to release."""


def _no_stream(**kwargs: Any) -> Iterator[bytes]:
    raise ServiceRequestError("MtlsTransport preloads every body; streaming is not supported")


class _RestResponse(HttpResponseImpl):
    def __init__(self, request: HttpRequest, status: int, reason: str,
                 headers: MutableMapping[str, str], body: bytes) -> None:
        super().__init__(
            request=request, internal_response=_Preloaded(), status_code=status, reason=reason,
            content_type=headers.get("Content-Type"), headers=headers,
            stream_download_generator=_no_stream,
        )
        self._content = body


class _LegacyResponse(LegacyHttpResponse):
    def __init__(self, request: LegacyHttpRequest, status: int, reason: str,
                 headers: MutableMapping[str, str], body: bytes) -> None:
        super().__init__(request, None)
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self.content_type = headers.get("Content-Type")
        self._body = body

    def body(self) -> bytes:
        return self._body


class MtlsTransport(HttpTransport):  # type: ignore[type-arg]
    """azure-core ``HttpTransport`` presenting the client's binding certificate.

    On POSIX it sends through urllib3 with the client's ``SSLContext``; with the Windows
    certificate store, through WinHTTP with the store's certificate context. Each request
    looks up the current certificate, so after a rotation the next request re-binds (new
    context, new connections). Redirects are not followed; bodies are preloaded.
    """

    def __init__(self, client: ManagedIdentityClient, *, timeout: float = 30.0) -> None:
        self.client = client
        self._timeout = timeout

    def open(self) -> None:
        """Nothing to open: pools are built per certificate on first use."""

    def close(self) -> None:
        """Leave the client open: it is shared with the credential (close it yourself)."""

    def __enter__(self) -> MtlsTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, request: Any, **kwargs: Any) -> Any:
        """Send ``request`` over mTLS; returns a rest or legacy response to match it."""
        import urllib3

        timeout = kwargs.pop("connection_timeout", self._timeout)
        read_timeout = kwargs.pop("read_timeout", timeout)
        body = request.content if isinstance(request, HttpRequest) else request.data
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif body is not None and not isinstance(body, (bytes, bytearray)):
            raise ServiceRequestError("MtlsTransport sends bytes or str bodies only")
        try:
            _, pool = self.client._mtls_pool()
            resp = pool.request(
                request.method, request.url, body=body, headers=dict(request.headers),
                timeout=urllib3.Timeout(connect=timeout, read=read_timeout), redirect=False,
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceRequestError(f"mTLS request failed: {type(exc).__name__}: {exc}",
                                      error=exc) from exc
        except MsiCertError as exc:
            raise ClientAuthenticationError(f"no binding certificate: {exc}") from exc
        headers = case_insensitive_dict(dict(resp.headers.items()))
        reason = getattr(resp, "reason", None) or ""
        if isinstance(request, HttpRequest):
            return _RestResponse(request, resp.status, reason, headers, resp.data)
        return _LegacyResponse(request, resp.status, reason, headers, resp.data)
