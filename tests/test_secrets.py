"""No key material, access token or attestation token in logs or errors.

One end-to-end run (mint, store hit, renewal, tokens, invalid_client evict-and-retry,
handshake rejection, IMDS and ESTS failures, IMDS answers that echo the attestation token,
the CLI at -vv) with every log record of the ``msicert`` logger (and the root logger) at
DEBUG and every exception message collected; then none of the secrets seen during the run
may appear in any of it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time

import pytest

from msicert import Backoff, Identity, ImdsError, MsiCertError, TokenError
from msicert._mint import Minted as _Minted
from msicert.emulator import Fault
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy
from tests.conftest import run_cli

RESOURCE = "https://vault.azure.net"
ATTESTATION_TOKEN = (  # what a MAA token looks like; distinctive enough to never occur by chance
    "eyJhbGciOiJSUzI1NiIsImtpZCI6Im1zaWNlcnQtdGVzdCJ9."
    "eyJpc3MiOiJodHRwczovL21hYS5leGFtcGxlIiwieC1tcy1hdHRlc3RhdGlvbi10eXBlIjoia2V5Z3VhcmQifQ."
    "U2VjcmV0U2lnbmF0dXJlT2ZUaGVBdHRlc3RhdGlvblRva2VuRm9yTXNpY2VydFRlc3Rz"
)


class Collector(logging.Handler):
    """Every record, formatted the way a handler would write it (exception text included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args))


def _exception_texts(exc: BaseException) -> list[str]:
    texts = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc)]
        texts += [str(v) for v in vars(exc).values()] if hasattr(exc, "__dict__") else []
        exc = exc.__cause__ or exc.__context__
    return texts


def _key_fragments(key_pem: bytes) -> list[str]:
    """PEM body lines, and windows of the DER as continuous base64 and as hex."""
    body = [line for line in key_pem.decode().splitlines() if line and "-----" not in line]
    der = base64.b64decode("".join(body))
    flat = base64.b64encode(der).decode()
    hexed = binascii.hexlify(der).decode()
    return (body + [flat[i : i + 32] for i in range(0, len(flat) - 32, 16)]
            + [hexed[i : i + 32] for i in range(0, len(hexed) - 32, 64)])


def _token_fragments(token: str) -> list[str]:
    return [token] + [part for part in token.split(".") if len(part) >= 16]


def _keys_in(store_dir: str) -> list[bytes]:
    path = os.path.join(store_dir, "msal_mtls.pem")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return re.findall(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", data, re.S)


@pytest.fixture
def collector():
    handler = Collector()
    loggers = [logging.getLogger("msicert"), logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_no_secret_reaches_a_log_line_or_an_error_message(make_client, emu, store_dir,
                                                         collector, monkeypatch):
    from msicert.backends.posix._software_key import SoftwareKey

    monkeypatch.setattr(SoftwareKey, "attestation_token", lambda key, meta:
                        ATTESTATION_TOKEN)  # as on a KeyGuard VM: every mint is attested
    texts: list[str] = []
    keys: list[bytes] = []
    tokens: list[str] = []

    def step(fn, *args, **kw):
        try:
            result = fn(*args, **kw)
        except MsiCertError as exc:
            texts.extend(_exception_texts(exc))
            result = None
        keys.extend(k for k in _keys_in(store_dir) if k not in keys)
        if result is not None:
            texts.append(repr(result))
            if hasattr(result, "access_token"):
                tokens.append(result.access_token)
        return result

    now = [time.time()]
    emu.lifetime = 1000.0
    c = make_client(clock=lambda: now[0])
    cert = step(c.get_certificate)  # mint
    step(c.get_certificate)  # memory
    step(make_client().get_certificate)  # store
    step(c.acquire_token, RESOURCE)  # token
    step(c.acquire_token, RESOURCE)  # cached token
    step(c.request, "GET", emu.ests_url + "/resource", resource=RESOURCE)
    emu.inject("token", Fault(kind="invalid_client", times=1))
    step(c.acquire_token, RESOURCE, claims='{"x":1}')  # evict, re-mint, retry
    emu.inject("token", Fault(kind="invalid_client", times=2))
    step(c.acquire_token, RESOURCE, claims='{"x":2}')  # fails twice: TokenError
    emu.inject("token", Fault(kind="reject_handshake", times=1))
    step(c.acquire_token, RESOURCE, claims='{"x":3}')
    for fault in (Fault(status=500, times=2), Fault(kind="wrong_token_type"),
                  Fault(kind="malformed_json"), Fault(status=400, body=b'{"error":"x"}')):
        emu.inject("token", fault)
        step(c.acquire_token, RESOURCE, claims='{"x":4}')
    cert = c.get_certificate()
    now[0] = cert.renew_after_ts + 1  # renewal ...
    step(c.get_certificate)
    now[0] = c.get_certificate().renew_after_ts + 1  # ... and failed renewals of every kind
    echo = ATTESTATION_TOKEN.encode()
    for endpoint, fault in [
        ("getplatformmetadata", Fault(status=503, times=None)),
        ("issuecredential", Fault(status=400, body=b'{"error":"invalid_request","error_'
                                  b'description":"bad attestation_token ' + echo + b'"}')),
        ("issuecredential", Fault(status=500, times=None, body=b"echo: " + echo)),
        ("issuecredential", Fault(status=200, body=b"<html>" + echo)),
        ("issuecredential", Fault(status=200, body=b'{"certificate":"' + echo + b'"}')),
        ("issuecredential", Fault(kind="wrong_key")),
        ("issuecredential", Fault(kind="expired")),
        ("getplatformmetadata", Fault(kind="malformed_json")),
    ]:
        emu.clear_faults()
        emu.inject(endpoint, fault)
        fresh = make_client(clock=lambda: now[0], mint_backoff=Backoff(0.0, 0.0))
        step(fresh.get_certificate)  # renewal fails: warning logged, old one served
        step(make_client(store_dir=store_dir + "-empty").get_certificate)  # no cert: raises
    emu.clear_faults()
    imds = ImdsClient(emu.imds_url, retry=RetryPolicy(scale=0.001))
    emu.inject("issuecredential", Fault(status=403, body=b"denied " + echo))
    step(imds.issue_credential, Identity(), "AAAA", ATTESTATION_TOKEN)
    for args in (["-vv", "cert", "--store-dir", store_dir],
                 ["-vv", "token", "--resource", RESOURCE, "--store-dir", store_dir],
                 ["-vv", "cert", "--store-dir", store_dir + "-cli-empty"]):
        if args[1] == "cert" and args[-1].endswith("-cli-empty"):
            emu.inject("getplatformmetadata", Fault(status=500, times=None))
        proc = run_cli(*args)
        texts.append(proc.stderr)  # stdout of `token` is the token itself, by design
        keys.extend(k for k in _keys_in(store_dir) if k not in keys)
        emu.clear_faults()

    assert len(keys) >= 3 and len(tokens) >= 3  # the run really rotated keys and got tokens
    assert any("renewal of certificate" in line for line in collector.lines)
    assert any("ESTS" in t or "token" in t for t in texts)
    haystack = "\n".join(collector.lines + texts)
    leaks = []
    for key in keys:
        leaks += [f"key: {f[:20]}..." for f in _key_fragments(key) if f in haystack]
    for token in tokens:
        leaks += [f"access token: {f[:20]}..." for f in _token_fragments(token) if f in haystack]
    leaks += [f"attestation token: {f[:20]}..." for f in _token_fragments(ATTESTATION_TOKEN)
              if f in haystack]
    assert "PRIVATE KEY" not in haystack
    assert leaks == [], leaks


def test_an_imds_error_never_echoes_the_attestation_token_even_in_part():
    from msicert.wire._imds_answers import parse_issued_credential

    for cut in (0, 150, 190, 199, 230):  # where the echo starts relative to the 200-char excerpt
        body = b"x" * cut + ATTESTATION_TOKEN.encode() + b" trailing"
        for status in (200, 400, 500):
            with pytest.raises(ImdsError) as info:
                parse_issued_credential(status, {}, body, "cid", redact=(ATTESTATION_TOKEN,))
            shown = str(info.value) + info.value.body_excerpt
            assert not any(ATTESTATION_TOKEN[i : i + 12] in shown
                           for i in range(len(ATTESTATION_TOKEN) - 11)), (cut, status, shown)


def test_token_and_certificate_values_do_not_show_secrets_in_repr(make_client, emu):
    c = make_client()
    token = c.acquire_token(RESOURCE)
    cert = c.get_certificate()
    assert token.access_token not in repr(token)
    assert "PRIVATE KEY" not in repr(cert) and "PRIVATE KEY" not in str(vars(cert))


def test_the_mint_record_does_not_show_the_private_key_in_its_repr():
    from msicert.backends.posix._software_key import SoftwareKey

    minted = _Minted(**{name: "" for name in _Minted._fields if name != "key"},
                     key=SoftwareKey.generate())
    assert b"PRIVATE KEY" in minted.key.key_pem.reveal()
    assert "PRIVATE KEY" not in repr(minted)
    with pytest.raises(TokenError):  # (keeps the import honest for the strict xfail)
        raise TokenError("x")
