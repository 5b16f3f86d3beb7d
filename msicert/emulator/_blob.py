"""A Blob storage stand-in: containers, block blobs (single put, blocks + block list),
properties and ranged reads, as azure-storage-blob uses them.

Every request needs ``x-ms-version`` (2017-11-09 or later, the first that takes OAuth
tokens) and a valid mtls_pop token for ``https://storage.azure.com``. Errors are the
service's XML ``<Error><Code>`` bodies with ``x-ms-error-code``.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.etree import ElementTree

from ._http import Handler, Reply

__all__ = ["ACCOUNT", "STORAGE_RESOURCE", "AccountData", "Blob", "answer", "read_body"]

ACCOUNT = "msicertaccount"
STORAGE_RESOURCE = "https://storage.azure.com"
MAX_UPLOAD = 8 << 20
_OAUTH_VERSION = "2017-11-09"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")

Auth = Callable[[str], "tuple[str | None, bool]"]


@dataclass
class Blob:
    """A committed block blob."""

    data: bytes
    content_type: str
    etag: str
    modified: float
    created: float


@dataclass
class AccountData:
    """The account's containers (name -> blobs) and staged, uncommitted blocks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    containers: dict[str, dict[str, Blob]] = field(default_factory=dict)
    blocks: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every container, blob and staged block."""
        with self.lock:
            self.containers.clear()
            self.blocks.clear()


def read_body(handler: Handler) -> bytes | None:
    """The request body (up to 8 MiB; chunked uploads are refused with 411)."""
    if handler.headers.get("Transfer-Encoding"):
        handler.close_connection = True
        handler.send(_error(411, "MissingContentLengthHeader", "Content-Length is required."))
        return None
    try:
        length = int(handler.headers.get("Content-Length", "0"))
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_UPLOAD:
        handler.close_connection = True
        handler.send(_error(413, "RequestBodyTooLarge", "The request body is too large."))
        return None
    return handler.rfile.read(length) if length else b""


def _error(status: int, code: str, message: str) -> Reply:
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}\nRequestId:{uuid.uuid4()}</Message></Error>").encode()
    reply = Reply(status, body=body, content_type="application/xml")
    reply.headers.append(("x-ms-error-code", code))
    return reply


def _common(reply: Reply, version: str) -> Reply:
    reply.headers += [("x-ms-request-id", str(uuid.uuid4())), ("x-ms-version", version)]
    return reply


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def answer(handler: Handler, data: AccountData, auth: Auth, path: str,
           query: dict[str, str], body: bytes) -> Reply:
    """The account's answer to one request under ``/<account>``."""
    state = handler.server.state
    version = handler.headers.get("x-ms-version") or ""
    problem, had_header = auth(STORAGE_RESOURCE)
    if problem is None and version < _OAUTH_VERSION:
        problem = f"x-ms-version {version!r} does not take OAuth tokens (needs {_OAUTH_VERSION}+)"
    if problem is not None:
        if had_header:
            state.violation(f"blob: {problem}")
        reply = _error(401, "InvalidAuthenticationInfo", problem)
        tenant = state.tenant_id
        reply.headers.append(("WWW-Authenticate", f"Bearer authorization_uri=https://login."
                              f"microsoftonline.com/{tenant}/oauth2/authorize "
                              f"resource_id={STORAGE_RESOURCE}"))
        return _common(reply, version)
    parts = path.strip("/").split("/", 2)[1:]
    return _common(_route(handler, data, parts, query, body), version)


def _route(handler: Handler, data: AccountData, parts: list[str], query: dict[str, str],
           body: bytes) -> Reply:
    method = handler.command
    if len(parts) == 1 and query.get("restype") == "container" and method == "PUT":
        if not _NAME.fullmatch(parts[0]):
            return _error(400, "InvalidResourceName", "The container name is invalid.")
        with data.lock:
            if parts[0] in data.containers:
                return _error(409, "ContainerAlreadyExists", "The container already exists.")
            data.containers[parts[0]] = {}
        reply = Reply(201, body=b"")
        reply.headers += [("ETag", f'"0x{uuid.uuid4().hex[:15].upper()}"'),
                          ("Last-Modified", _http_date(time.time()))]
        return reply
    if len(parts) != 2 or not parts[1]:
        return _error(400, "UnsupportedOperation", f"{method} on this path is not supported.")
    container, name = parts
    with data.lock:
        blobs = data.containers.get(container)
        if blobs is None:
            return _error(404, "ContainerNotFound", "The specified container does not exist.")
        if method == "PUT":
            return _put(handler, data, blobs, container, name, query, body)
        blob = blobs.get(name)
    if method not in ("GET", "HEAD"):
        return _error(400, "UnsupportedOperation", f"{method} on a blob is not supported.")
    if blob is None:
        reply = _error(404, "BlobNotFound", "The specified blob does not exist.")
        if method == "HEAD":
            reply.body = b""
        return reply
    return _read(handler, blob)


def _put(handler: Handler, data: AccountData, blobs: dict[str, Blob], container: str,
         name: str, query: dict[str, str], body: bytes) -> Reply:
    """(Under ``data.lock``.) Put Blob, Put Block, Put Block List."""
    comp = query.get("comp", "")
    if comp == "block":
        block_id = query.get("blockid", "")
        if not block_id:
            return _error(400, "InvalidQueryParameterValue", "blockid is required.")
        data.blocks.setdefault((container, name), {})[block_id] = body
        reply = Reply(201, body=b"")
        reply.headers.append(("x-ms-request-server-encrypted", "true"))
        return reply
    if comp == "blocklist":
        try:
            ids = [e.text or "" for e in ElementTree.fromstring(body)]
        except ElementTree.ParseError:
            return _error(400, "InvalidXmlDocument", "The block list is not XML.")
        staged = data.blocks.get((container, name), {})
        if any(i not in staged for i in ids):
            return _error(400, "InvalidBlockList", "The block list names an unknown block.")
        content = b"".join(staged[i] for i in ids)
        data.blocks.pop((container, name), None)
    elif not comp:
        if handler.headers.get("x-ms-blob-type") != "BlockBlob":
            return _error(400, "InvalidHeaderValue", "x-ms-blob-type must be BlockBlob.")
        content = body
    else:
        return _error(400, "UnsupportedOperation", f"comp={comp} is not supported.")
    if handler.headers.get("If-None-Match") == "*" and name in blobs:
        return _error(409, "BlobAlreadyExists", "The specified blob already exists.")
    now = time.time()
    old = blobs.get(name)
    blob = Blob(content, handler.headers.get("x-ms-blob-content-type")
                or "application/octet-stream", f'"0x{uuid.uuid4().hex[:15].upper()}"', now,
                old.created if old else now)
    blobs[name] = blob
    reply = Reply(201, body=b"")
    reply.headers += [("ETag", blob.etag), ("Last-Modified", _http_date(now)),
                      ("x-ms-request-server-encrypted", "true")]
    return reply


def _read(handler: Handler, blob: Blob) -> Reply:
    """Get Blob (whole or one range) and Get Blob Properties."""
    size = len(blob.data)
    status, content, extra = 200, blob.data, []
    wanted = handler.headers.get("x-ms-range") or handler.headers.get("Range")
    if wanted and handler.command == "GET":
        match = _RANGE.fullmatch(wanted.strip())
        if match is None:
            return _error(400, "InvalidRange", "The range is malformed.")
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size or end < start:
            reply = _error(416, "InvalidRange", "The range specified is invalid.")
            reply.headers.append(("Content-Range", f"bytes */{size}"))
            return reply
        status, content = 206, blob.data[start:end + 1]
        extra.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    reply = Reply(status, body=content, content_type=blob.content_type)
    reply.headers += [
        *extra, ("Accept-Ranges", "bytes"), ("ETag", blob.etag),
        ("Last-Modified", _http_date(blob.modified)), ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-creation-time", _http_date(blob.created)), ("x-ms-lease-state", "available"),
        ("x-ms-lease-status", "unlocked"), ("x-ms-server-encrypted", "true"),
    ]
    if status == 200 and handler.command == "GET":
        digest = base64.b64encode(hashlib.md5(blob.data).digest()).decode()
        reply.headers.append(("Content-MD5", digest))
    return reply
