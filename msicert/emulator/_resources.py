"""Azure-shaped resources over mutual TLS: a Key Vault and a Blob storage account stand-in.

One HTTPS server (client certificate required, the same CA as ESTS) answers
``/secrets/...`` as a vault (:mod:`._keyvault`) and ``/<account>/...`` as a storage account
(:mod:`._blob`). Every authenticated request is checked as the services check an mtls_pop
request: the ``Authorization`` scheme is ``mtls_pop``, the token was minted by this
emulator's ESTS, has not expired, names this service in ``aud``, and its ``cnf.x5t#S256`` is
the thumbprint of the certificate presented in this connection's handshake. A refusal is a
401 that the SDKs understand, and a recorded contract violation.
"""

from __future__ import annotations

import ssl
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509

from . import _blob, _ca, _keyvault
from ._ests import _peer_problem
from ._http import Handler, HandshakeFailureHook, Reply, Server
from ._state import RecordedRequest, State
from ._token import decode_token_payload

__all__ = ["ResourceHandler", "ResourceServer"]


class ResourceServer(Server):
    """The HTTPS server of the stand-ins: a :class:`Server` carrying their data."""

    def __init__(self, address: tuple[str, int], state: State, *, tls: ssl.SSLContext,
                 on_handshake_failure: HandshakeFailureHook | None = None) -> None:
        self.vault = _keyvault.VaultData(tenant_id=state.tenant_id)
        self.account = _blob.AccountData()
        super().__init__(address, ResourceHandler, state, tls=tls,
                         on_handshake_failure=on_handshake_failure)

    @property
    def vault_resource(self) -> str:
        """The resource (token audience) the vault's challenge names."""
        host, port = self.server_address[:2]
        return _keyvault.vault_resource(str(host), int(port))


class ResourceHandler(Handler):
    """Routes ``/secrets/...`` to the vault and ``/<account>/...`` to the storage account."""

    server_header = "msicert-emulator-resources"
    server: ResourceServer

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_HEAD = do_POST = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        first = url.path.lstrip("/").split("/", 1)[0]
        if first not in ("secrets", _blob.ACCOUNT):
            self.server.state.violation(f"resources: unknown path {url.path!r}")
            self.send(Reply(404, {"error": "not_found", "error_description": "no such path"}))
            return
        endpoint = "keyvault" if first == "secrets" else "blob"
        body = _keyvault.read_body(self) if endpoint == "keyvault" else _blob.read_body(self)
        if body is None:
            return
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.server.state.record(RecordedRequest(
            endpoint, self.command, url.path, query, self.header_dict(), body, time.time()))
        fault = self.server.state.faults.take(endpoint)
        if fault is not None and fault.delay:
            self.server.state.stopping.wait(fault.delay)
        if fault is not None and fault.replaces_reply:
            self.send(Reply(fault.status or 500, body=fault.body or b""))
            return
        if endpoint == "keyvault":
            reply = _keyvault.answer(self, self.server.vault, self.token_problem,
                                     self.server.vault_resource, url.path, query, body)
        else:
            reply = _blob.answer(self, self.server.account, self.token_problem, url.path,
                                 query, body)
        self.send(reply)

    def token_problem(self, audience: str) -> tuple[str | None, bool]:
        """(Why this request's ``Authorization`` is refused, or None; whether it had one)."""
        header = self.headers.get("Authorization")
        if not header:
            return "request carries no Authorization header", False
        connection: Any = self.connection
        peer_der = connection.getpeercert(True) if isinstance(connection, ssl.SSLSocket) else None
        if peer_der is None:  # unreachable with CERT_REQUIRED; kept as a guard
            return "no client certificate in the TLS handshake", True
        peer_problem = _peer_problem(x509.load_der_x509_certificate(peer_der))
        if peer_problem is not None:
            return peer_problem, True
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.casefold() != "mtls_pop" or not token:
            return f"expected 'Authorization: mtls_pop <access token>', not {scheme!r}", True
        if not self.server.state.minted(token):
            return "access token was not minted by this emulator", True
        payload = decode_token_payload(token)
        if payload.get("exp", 0) <= time.time():
            return "access token has expired", True
        if payload.get("aud") != audience:
            return f"access token is for {payload.get('aud')!r}, not {audience!r}", True
        if payload.get("cnf", {}).get("x5t#S256") != _ca.x5t_s256(peer_der):
            return "access token is bound to another certificate (cnf.x5t#S256 mismatch)", True
        return None, True
