"""``MtlsPopCredential``: azure-core's ``TokenCredential`` and ``SupportsTokenInfo``."""

from __future__ import annotations

from typing import Any

from azure.core.credentials import AccessToken as AzureAccessToken
from azure.core.credentials import AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError

from .._client import ManagedIdentityClient
from .._errors import MsiCertError
from ._issued import issued_for

__all__ = ["TOKEN_TYPE", "MtlsPopCredential", "MtlsTokenInfo", "acquire", "resource_for_scopes"]

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


def check_tenant(client: ManagedIdentityClient, tenant_id: str | None) -> None:
    """Accept no tenant or the identity's own; refuse another one, naming both.

    azure-identity's rule for a credential without ``additionally_allowed_tenants``; a
    managed identity has no way to reach another tenant, so there is no such option here.
    """
    if not tenant_id:
        return
    own = client.get_certificate().tenant_id
    if tenant_id.strip().casefold() != own.casefold():
        raise ClientAuthenticationError(
            f"this managed identity belongs to tenant {own}; it cannot get a token for tenant "
            f"{tenant_id} (the resource asked for that tenant)")


def acquire(client: ManagedIdentityClient, resource: str, claims: str | None) -> MtlsTokenInfo:
    """A token for ``resource`` from ``client``, remembered as one msicert issued."""
    try:
        token = client.acquire_token(resource, claims=claims or None)
    except MsiCertError as exc:
        raise ClientAuthenticationError(f"mtls_pop token for {resource}: {exc}") from exc
    issued_for(client).add(token.access_token, resource, token.x5t_s256, token.expires_on)
    return MtlsTokenInfo(token.access_token, token.expires_on,
                         refresh_on=int(token.refresh_on), x5t_s256=token.x5t_s256)


class MtlsPopCredential:
    """azure-core ``TokenCredential`` and ``SupportsTokenInfo`` giving ``mtls_pop`` tokens.

    ``client`` is the :class:`~msicert.ManagedIdentityClient` to use (share it with
    :class:`~msicert.azure.MtlsTransport`, or take both from
    :func:`~msicert.azure.sdk_kwargs`); without one, a client is built from
    ``client_kwargs``. Tokens are bound to the client's binding certificate and must be sent
    over a connection that presents it: ``MtlsTransport`` does that, and turns the
    ``Bearer`` scheme azure-core writes into ``mtls_pop`` for these tokens only.

    ``tenant_id`` (Key Vault passes its challenge's tenant) is accepted when it is the
    identity's own tenant; any other tenant raises ``ClientAuthenticationError`` naming both.
    ``claims`` bypasses the token cache.

    Prefer :meth:`get_token_info`: it returns an object whose repr hides the token, while
    azure-core's ``AccessToken`` from :meth:`get_token` is a named tuple whose repr shows it.
    """

    def __init__(self, client: ManagedIdentityClient | None = None, **client_kwargs: Any) -> None:
        if client is not None and client_kwargs:
            raise TypeError("give either a client or keyword arguments for one, not both")
        self.client = client if client is not None else ManagedIdentityClient(**client_kwargs)
        self._owns_client = client is None

    def _acquire(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None
                 ) -> MtlsTokenInfo:
        resource = resource_for_scopes(scopes)
        try:
            check_tenant(self.client, tenant_id)
        except MsiCertError as exc:
            raise ClientAuthenticationError(f"mtls_pop token for {resource}: {exc}") from exc
        return acquire(self.client, resource, claims)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """An ``AccessTokenInfo`` with ``token_type == "mtls_pop"`` and ``refresh_on`` (its
        repr hides the token: the preferred way to get one)."""
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
        """An azure-core ``AccessToken`` (an mtls_pop token; the type is implied).

        ``AccessToken`` is a named tuple: its repr, and so any log line or traceback that
        shows it, contains the token. Prefer :meth:`get_token_info`.
        """
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
