"""``MtlsPopPolicy``: a bearer-token policy that writes ``mtls_pop`` itself.

Not needed with :func:`~msicert.azure.sdk_kwargs` (the transport fixes the scheme); kept for
hand-built pipelines that want the scheme right before the transport.
"""

from __future__ import annotations

import base64
from collections.abc import MutableMapping
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.pipeline.policies._utils import get_challenge_parameter

from .._lazylog import LazyLogger
from ..wire._ests import check_claims
from ._credential import TOKEN_TYPE, MtlsPopCredential

__all__ = ["MtlsPopPolicy"]

log = LazyLogger("msicert")


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
                check_claims(claims)  # a JSON object, or the 401 goes back unanswered
            except (ValueError, UnicodeDecodeError):
                log.warning("claims challenge is not a base64url JSON object; not retrying")
                return False
            log.info("resource answered 401 with a claims challenge; re-acquiring once")
            self.authorize_request(request, *self._scopes, claims=claims)
            return True
        return False
