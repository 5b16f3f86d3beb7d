"""The one rule both transports apply to ``Authorization`` before a request leaves.

For a token msicert issued (see :mod:`msicert.azure._issued`) the header becomes
``mtls_pop <token>``, whatever scheme azure-core or Key Vault wrote; when that token is bound
to a certificate that is no longer the client's, the caller re-acquires first. Any other
header is sent exactly as it came. The request's own headers are never changed: the result is
a new dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._credential import TOKEN_TYPE
from ._issued import IssuedTokens

__all__ = ["Stale", "bind", "with_token"]

_SCHEMES = frozenset({"bearer", TOKEN_TYPE})


@dataclass(frozen=True)
class Stale:
    """The header holds msicert's token for ``resource``, bound to a rotated certificate."""

    resource: str


def _authorization(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "authorization":
            return value
    return None


def with_token(headers: Mapping[str, str], token: str) -> dict[str, str]:
    """A copy of ``headers`` whose Authorization is ``mtls_pop <token>``."""
    copy = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    copy["Authorization"] = f"{TOKEN_TYPE} {token}"
    return copy


def bind(headers: Mapping[str, str], issued: IssuedTokens, x5t_s256: str
         ) -> dict[str, str] | Stale:
    """The headers to send over a connection presenting ``x5t_s256``, or :class:`Stale`."""
    value = _authorization(headers)
    if value is not None:
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        found = issued.lookup(token) if scheme.lower() in _SCHEMES and token else None
        if found is not None:
            if found.x5t_s256 != x5t_s256:
                return Stale(found.resource)
            return with_token(headers, token)
    return dict(headers)
