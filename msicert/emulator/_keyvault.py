"""A Key Vault stand-in: the challenge flow and secrets (set, get), as the Key Vault SDK uses them.

A request without ``Authorization`` gets Key Vault's 401 challenge
(``Bearer authorization="<authority>/<tenant>", resource="<resource>"``); the SDK answers it
with the request again, body restored and a token. An authenticated request whose token is
refused gets the same 401 (and a contract violation). ``api-version`` is required, as Key
Vault requires it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._http import Handler, Reply

__all__ = ["AUTHORITY", "VaultData", "answer", "read_body", "vault_resource"]

AUTHORITY = "https://login.microsoftonline.com"
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_MAX_BODY = 1 << 20

Auth = Callable[[str], "tuple[str | None, bool]"]


def vault_resource(host: str, port: int) -> str:
    """The resource the vault's challenge names.

    Key Vault names ``https://vault.azure.net``, and the SDK requires the vault's host to end
    with ``.vault.azure.net``. On ``127.0.0.1`` the stand-in names the parent of its own
    address (``https://0.0.1:<port>``), which passes the same check.
    """
    parent = host.split(".", 1)[1] if "." in host else host
    return f"https://{parent}:{port}"


@dataclass
class VaultData:
    """The vault's secrets (name -> versions, oldest first) and its challenge's tenant."""

    tenant_id: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    secrets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    challenge_tenant_id: str | None = None  # None: the identity's tenant

    def clear(self) -> None:
        """Forget every secret and restore the challenge's tenant."""
        with self.lock:
            self.secrets.clear()
            self.challenge_tenant_id = None


def read_body(handler: Handler) -> bytes | None:
    """The request body (Key Vault's bodies are small JSON)."""
    return handler.read_body()


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


def _challenge(data: VaultData, resource: str, message: str) -> Reply:
    reply = _error(401, "Unauthorized", message)
    tenant = data.challenge_tenant_id or data.tenant_id
    reply.headers.append(("WWW-Authenticate",
                          f'Bearer authorization="{AUTHORITY}/{tenant}", resource="{resource}"'))
    return reply


def answer(handler: Handler, data: VaultData, auth: Auth, resource: str, path: str,
           query: dict[str, str], body: bytes) -> Reply:
    """The vault's answer to one request under ``/secrets``."""
    state = handler.server.state
    problem, had_header = auth(resource)
    if problem is not None:
        if had_header:
            state.violation(f"keyvault: {problem}")
            return _challenge(data, resource, f"AKV10022: {problem}")
        return _challenge(data, resource, "AKV10000: Request is missing a Bearer or PoP token.")
    if not query.get("api-version"):
        return _error(400, "BadParameter", "The api-version query parameter is required.")
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3) or not _NAME.fullmatch(parts[1]):
        return _error(400, "BadParameter", f"no secret operation at {path!r}")
    name = parts[1]
    version = parts[2] if len(parts) == 3 else ""
    base = f"https://{handler.headers.get('Host', '')}"
    if handler.command == "PUT" and not version:
        return _set(data, base, name, body)
    if handler.command == "GET":
        with data.lock:
            versions = list(data.secrets.get(name, []))
        found = [v for v in versions if not version or v["id"].endswith("/" + version)]
        if not found:
            return _error(404, "SecretNotFound",
                          f"A secret with (name/id) {name}/{version} was not found in this "
                          "key vault.")
        return Reply(200, found[-1])
    return _error(405, "MethodNotAllowed", f"{handler.command} {path} is not supported")


def _set(data: VaultData, base: str, name: str, body: bytes) -> Reply:
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("value"), str):
        # An empty body here is the SDK's challenge request sent again without its body.
        return _error(400, "BadParameter", "The request body must be JSON with a string "
                                           "'value' (the body was empty or not JSON).")
    now = int(time.time())
    bundle: dict[str, Any] = {
        "value": document["value"],
        "id": f"{base}/secrets/{name}/{uuid.uuid4().hex}",
        "attributes": {"enabled": True, "created": now, "updated": now,
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
    }
    for key in ("contentType", "tags"):
        if key in document:
            bundle[key] = document[key]
    with data.lock:
        data.secrets.setdefault(name, []).append(bundle)
    return Reply(200, bundle)
