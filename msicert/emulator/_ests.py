"""The ESTS side over mTLS: the mtls_pop token endpoint and a protected ``/resource``.

The TLS layer admits only certificates the emulator's issuing CA signed that are valid at
handshake time. The application layer checks again, because a kept-alive connection outlives
the handshake: a certificate that expired since then gets ``invalid_client``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from . import _ca
from ._faults import ESTS_ENDPOINTS, HANDSHAKE_KINDS, Fault
from ._http import (
    ConnectionHook,
    Handler,
    HandshakeFailureHook,
    Reply,
    _drain,
    apply_fault,
    error_code,
    parse_query,
)
from ._state import RecordedRequest, State
from ._token import decode_token_payload, mint_token

__all__ = ["EstsHandler", "handshake_failure_hook", "reject_handshake_hook", "server_context"]

logger = logging.getLogger("msicert.emulator")

_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_FORM_FIELDS = frozenset({"grant_type", "client_id", "scope", "token_type", "claims"})
# A TLS record carrying a fatal handshake_failure(40) alert, sent in place of a ServerHello.
_HANDSHAKE_FAILURE_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28))
_AADSTS = {"invalid_client": 700027, "invalid_request": 900144, "tenant": 90002}
# CertificateCreateAttestationTokenInvalidJkuHeader: the revocation spec's example code.
_REVOKED = (1000613,)


def server_context(tls: _ca.ServerTls, chain_file: str) -> ssl.SSLContext:
    """Server context: our leaf, client certificate required, issuing CA the only anchor."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_ca.trusted_issuers_pem())
    return context


_fault_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
_fault_contexts_lock = threading.Lock()
_TRICKLE_INTERVAL = 0.2
_TRICKLE_LIMIT = 120.0  # a trickle never outlives a client that forgot to time out by much


def _fault_context(kind: str, host: str) -> ssl.SSLContext:
    """The server context a handshake fault answers with (built once per kind and host)."""
    with _fault_contexts_lock:
        cached = _fault_contexts.get((kind, host))
        if cached is not None:
            return cached
        if kind == "reject_certificate":
            tls = _ca.server_tls(host)
            anchor = tls.ca_pem  # the server CA: it never issued a client certificate
        else:
            tls = _ca.fault_server_tls(host, trusted=kind == "wrong_server_name")
            anchor = _ca.trusted_issuers_pem().encode("ascii")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="msicert-emu-") as tmp:
            chain_file = os.path.join(tmp, "chain.pem")
            fd = os.open(chain_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(tls.key_pem + tls.leaf_pem)
            context.load_cert_chain(chain_file)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=anchor.decode("ascii"))
        _fault_contexts[(kind, host)] = context
        return context


def reject_handshake_hook(state: State) -> ConnectionHook:
    """Connection hook acting out a queued handshake fault (see ``Fault``) on a new one."""

    def take() -> tuple[str, Fault] | None:
        for endpoint in ESTS_ENDPOINTS:
            for kind in sorted(HANDSHAKE_KINDS):
                fault = state.faults.take(endpoint, kind=kind)
                if fault is not None:
                    return endpoint, fault
        return None

    def hook(connection: socket.socket) -> bool:
        taken = take()
        if taken is None:
            return False
        endpoint, fault = taken
        state.record(RecordedRequest(endpoint, "TLS", "", {}, {}, b"", time.time()))
        if fault.delay:
            state.stopping.wait(fault.delay)
        try:
            connection.settimeout(2.0)
            if fault.kind == "reject_handshake":
                connection.recv(65536)  # the ClientHello
                connection.sendall(_HANDSHAKE_FAILURE_ALERT)
                while connection.recv(65536):  # drain until the client closes, so no RST
                    pass
            elif fault.kind in ("close_handshake", "reset_handshake"):
                connection.recv(65536)  # the ClientHello, then the connection ends
                if fault.kind == "reset_handshake":  # linger 0: close() sends an RST
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                    connection.close()
                else:
                    connection.shutdown(socket.SHUT_RDWR)
            else:
                host = str(connection.getsockname()[0])
                tls = _fault_context(fault.kind, host).wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                )
                with contextlib.suppress(ssl.SSLError, OSError):
                    tls.do_handshake()  # fails: on our side or on the client's
                _drain(tls)  # let the client read the alert rather than a reset
        except OSError:
            pass
        return True

    return hook


def handshake_failure_hook(state: State) -> HandshakeFailureHook:
    """Record a client-certificate problem in the handshake as a contract violation."""

    def hook(exc: Exception) -> None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            state.violation(f"ests: TLS client certificate rejected: {exc.verify_message}")
        elif isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            state.violation("ests: TLS handshake without a client certificate")
        else:
            logger.debug("ests: TLS handshake failed: %s", exc)

    return hook


def _issued_by_us(peer: x509.Certificate) -> bool:
    for cn in _ca.ISSUER_CNS:
        try:
            peer.verify_directly_issued_by(_ca.issuing_ca(cn).certificate)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _peer_problem(peer: x509.Certificate) -> str | None:
    if not _issued_by_us(peer):
        return "client certificate was not issued by the emulator's issuing CA"
    now = dt.datetime.now(dt.timezone.utc)
    if not peer.not_valid_before_utc <= now < peer.not_valid_after_utc:
        return "client certificate is expired or not yet valid"
    return None


class EstsHandler(Handler):
    """Serves ``/{tenant}/oauth2/v2.0/token`` and ``/resource`` over mutual TLS."""

    server_header = "msicert-emulator-ests"

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    @property
    def state(self) -> State:
        """The emulator state this server belongs to."""
        return self.server.state

    def _error(self, status: int, error: str, description: str, code: int | None,
               codes: tuple[int, ...] | None = None) -> Reply:
        """An AAD error answer; ``codes`` (when given) replaces ``[code]`` in
        ``error_codes``, and an empty ``codes`` leaves the member out."""
        correlation = self.headers.get("client-request-id") or str(uuid.uuid4())
        codes = codes if codes is not None else (() if code is None else (code,))
        prefix = f"AADSTS{codes[0]}: " if codes else ""
        payload: dict[str, Any] = {
            "error": error,
            "error_description": f"{prefix}{description}",
            **({"error_codes": list(codes)} if codes else {}),
            "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": correlation,
        }
        reply = Reply(status, payload)
        reply.headers.append(("x-ms-request-id", str(uuid.uuid4())))
        return reply

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        body = self.read_body()
        if body is None:
            return
        match = _TOKEN_PATH.fullmatch(url.path)
        if url.path == "/resource" or url.path.startswith("/resource/"):
            endpoint = "resource"
        elif match is not None:
            endpoint = "token"
        else:
            self.state.violation(f"ests: unknown path {url.path!r} ({self.command})")
            self.send(Reply(404, {"error": "not_found", "error_description": "no such path"}))
            return
        query, _ = parse_query(url.query)
        self.state.record(
            RecordedRequest(
                endpoint, self.command, url.path, query, self.header_dict(), body, time.time()
            )
        )
        connection = self.connection
        peer_der = connection.getpeercert(True) if isinstance(connection, ssl.SSLSocket) else None
        if peer_der is None:  # unreachable with CERT_REQUIRED; kept as a guard
            self.send(self._error(401, "invalid_client", "no client certificate", 700027))
            return
        peer = x509.load_der_x509_certificate(peer_der)
        fault = self.state.faults.take(endpoint)
        trickle = fault.kind if fault is not None and fault.kind.startswith("trickle_") else ""
        if fault is not None and fault.delay and not trickle:
            self.state.stopping.wait(fault.delay)
        if fault is not None and fault.replaces_reply:
            reply = self._error(
                fault.status or 200,
                error_code(fault.status),
                f"msicert emulator: injected HTTP {fault.status}",
                50000 + (fault.status or 0),
            )
            reply.body = fault.body
        elif match is not None:
            reply = self._token(match.group(1), body, peer, peer_der, fault)
        elif fault is not None and fault.kind == "claims_challenge":
            self.state.challenge_tokens()
            reply = claims_challenge(fault.claims)
        else:
            reply = self._resource(peer, peer_der)
        if fault is not None:
            apply_fault(reply, fault)
        if (self.headers.get("return-client-request-id") or "").lower() == "true":
            correlation = self.headers.get("client-request-id")
            if correlation:  # ESTS echoes the caller's id when asked to
                reply.headers.append(("client-request-id", correlation))
        if trickle and fault is not None:
            self._trickle(reply, trickle, fault.delay or _TRICKLE_INTERVAL)
            return
        self.send(reply)

    def _trickle(self, reply: Reply, kind: str, interval: float) -> None:
        """Answer ``reply`` one header line (or one body byte) every ``interval`` seconds."""
        self.close_connection = True
        body = reply.encoded()
        head = [f"{self.protocol_version} {reply.status} OK\r\n".encode("latin-1")]
        lines = [f"Content-Type: {reply.content_type}", f"Content-Length: {len(body)}",
                 "Connection: close"]
        give_up = time.monotonic() + _TRICKLE_LIMIT
        try:
            if kind == "trickle_headers":
                self.wfile.write(head[0])
                while time.monotonic() < give_up and not self.state.stopping.wait(interval):
                    self.wfile.write(b"X-Trickle: 1\r\n")
                    self.wfile.flush()
                return
            self.wfile.write(head[0] + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            for i in range(len(body)):
                self.wfile.flush()
                if time.monotonic() > give_up or self.state.stopping.wait(interval):
                    return
                self.wfile.write(body[i : i + 1])
            self.wfile.flush()
        except OSError:
            logger.debug("client went away during a trickled answer to %s", self.path)

    def _form(self, body: bytes) -> tuple[dict[str, str], list[str]]:
        problems: list[str] = []
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            problems.append(f"Content-Type is {content_type!r}, not a form")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return {}, [*problems, "body is not application/x-www-form-urlencoded"]
        names = [name for name, _ in pairs]
        problems += [
            f"form field {n!r} appears more than once"
            for n in sorted(set(names))
            if names.count(n) > 1
        ]
        problems += [f"unexpected form field {n!r}" for n in sorted(set(names) - _FORM_FIELDS)]
        return dict(pairs), problems

    def _token(
        self, tenant: str, body: bytes, peer: x509.Certificate, peer_der: bytes,
        fault: Fault | None,
    ) -> Reply:
        kind = fault.kind if fault is not None else ""
        if self.command != "POST":
            self.state.violation(f"token: method {self.command}, expected POST")
            return self._error(405, "invalid_request", "token endpoint accepts POST only", 900144)
        peer_problem = _peer_problem(peer)
        if peer_problem is not None:
            self.state.violation(f"token: {peer_problem}")
            return self._error(401, "invalid_client", peer_problem, _AADSTS["invalid_client"])
        form, problems = self._form(body)
        names = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else ""
        if form.get("grant_type") != "client_credentials":
            problems.append(f"grant_type is {form.get('grant_type')!r}, not client_credentials")
        if form.get("client_id", "").casefold() != cn.casefold():
            problems.append(f"client_id {form.get('client_id')!r} is not the certificate CN {cn!r}")
        scope = form.get("scope", "")
        resource = scope[: -len("/.default")] if scope.endswith("/.default") else ""
        if not resource or resource.endswith("/"):
            problems.append(f"scope {scope!r} is not '<resource without trailing />/.default'")
        if form.get("token_type") != "mtls_pop":
            problems.append(f"token_type is {form.get('token_type')!r}, not mtls_pop")
        if "claims" in form and not _is_json_object(form["claims"]):
            problems.append("claims is not a JSON object")
        tenant_ok = tenant.casefold() == self.state.tenant_id.casefold()
        if not tenant_ok:
            problems.append(f"tenant {tenant!r} in the path is not the identity's tenant")
        for problem in problems:
            self.state.violation(f"token: {problem}")
        if kind == "invalid_client" and fault is not None:
            codes = _REVOKED if fault.error_codes is None else fault.error_codes
            description = ("The attestation token contains invalid Jku header (injected by the "
                           "msicert emulator)." if codes == _REVOKED else
                           "Client credential rejected (injected by the msicert emulator).")
            return self._error(401, "invalid_client", description, None, codes)
        if problems:
            code = _AADSTS["invalid_request" if tenant_ok else "tenant"]
            return self._error(400, "invalid_request", "; ".join(problems), code)
        lifetime = int(self.state.token_lifetime)
        token = mint_token(
            resource=resource,
            client_id=form["client_id"],
            tenant_id=self.state.tenant_id,
            x5t_s256=_ca.x5t_s256(peer_der),
            now=int(time.time()),
            lifetime=lifetime,
        )
        self.state.remember_token(token)
        reply = Reply(
            200,
            {
                "token_type": "Bearer" if kind == "wrong_token_type" else "mtls_pop",
                "access_token": token,
                "expires_in": str(lifetime) if kind == "expires_in_string" else lifetime,
                "refresh_in": lifetime // 2,
            },
        )
        reply.headers.append(("x-ms-request-id", str(uuid.uuid4())))
        return reply

    def _resource(self, peer: x509.Certificate, peer_der: bytes) -> Reply:
        peer_problem = _peer_problem(peer)
        thumbprint = _ca.x5t_s256(peer_der)
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        problem = peer_problem
        payload: dict[str, Any] = {}
        if problem is None and (scheme.casefold() != "mtls_pop" or not token.strip()):
            problem = "expected 'Authorization: mtls_pop <access token>'"
        elif problem is None and not self.state.minted(token.strip()):
            problem = "access token was not minted by this emulator"
        elif problem is None and self.state.challenged(token.strip()):
            return claims_challenge()  # minted before a claims challenge: challenged again
        elif problem is None:
            payload = decode_token_payload(token.strip())
            if payload.get("exp", 0) <= time.time():
                problem = "access token has expired"
            elif payload.get("cnf", {}).get("x5t#S256") != thumbprint:
                problem = "access token is bound to another certificate (cnf.x5t#S256 mismatch)"
        if problem is not None:
            self.state.violation(f"resource: {problem}")
            error = "invalid_client" if peer_problem else "invalid_token"
            reply = Reply(401, {"error": error, "error_description": problem})
            reply.headers.append(("WWW-Authenticate", f'mtls_pop error="{error}"'))
            return reply
        return Reply(200, {"ok": True, "x5t#S256": thumbprint, "client_id": payload.get("appid")})


CHALLENGE_CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'


def claims_challenge(claims: str | None = None) -> Reply:
    """401 with a CAE-style claims challenge (``claims``, by default ``CHALLENGE_CLAIMS``,
    base64url, no padding)."""
    text = CHALLENGE_CLAIMS if claims is None else claims
    encoded = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    reply = Reply(401, {"error": "insufficient_claims",
                        "error_description": "msicert emulator: injected claims challenge"})
    reply.headers.append(
        ("WWW-Authenticate", f'mtls_pop error="insufficient_claims", claims="{encoded}"'))
    return reply


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
