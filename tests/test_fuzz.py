"""Property-based fuzzing of every parser of untrusted bytes.

Each parser either returns a value that meets its invariants or raises one of its documented
errors (ImdsError/ImdsResponseError, TokenError, CorruptEntry/StoreError; ValueError for
Identity.from_selectors) - nothing else escapes, whatever the bytes. A failed store write
leaves the previous file byte-identical.

Normal run: 200 examples per parser (profile ``msicert-fuzz``). Deep run (profile
``msicert-fuzz-deep``)::

    MSICERT_FUZZ_EXAMPLES=10000 python3 -m pytest tests/test_fuzz.py -q -p no:randomly
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import random
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from unittest import mock
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from msicert import Identity, ImdsError, ImdsResponseError, StoreError, TokenError
from msicert._identity import is_guid
from msicert._policy import identity_mismatch
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix import _store_read, _store_write
from msicert.backends.posix._file_store import FileStore
from msicert.wire._ests import EstsRejected, parse_token_response
from msicert.wire._http import MAX_BODY
from msicert.wire._imds_answers import parse_issued_credential, parse_platform_metadata
from msicert.wire._retry import _retry_after
from tests.certgen import ISSUER_CN, key_pem, make_cert, rsa_key
from tests.store_contract import UAMI, PemKey, entry, pem_of

# --- profiles ---------------------------------------------------------------------------------

ENV_EXAMPLES = "MSICERT_FUZZ_EXAMPLES"
_COMMON = {
    "deadline": None,  # a slow example is not a bug here; hangs are caught by pytest timeouts
    "database": None,  # never write .hypothesis/ into the checkout
    "print_blob": True,  # a failure prints @reproduce_failure(...)
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.large_base_example, HealthCheck.filter_too_much],
}
settings.register_profile("msicert-fuzz", max_examples=200, **_COMMON)
settings.register_profile(
    "msicert-fuzz-deep", max_examples=int(os.environ.get(ENV_EXAMPLES) or 10_000), **_COMMON
)
# FUZZ: the parsers themselves (deep in the dedicated run); SIDE: properties around them.
FUZZ = settings.get_profile("msicert-fuzz-deep" if os.environ.get(ENV_EXAMPLES) else "msicert-fuzz")
SIDE = settings.get_profile("msicert-fuzz")

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning"  # cryptography warns about odd (fuzzed) certificates it still loads
)

CID = "0b5e6c9a-5c1e-4d2b-9a47-3f0f6a1d2e3c"
GOOD_SERVER = {"Server": "IMDS/150.870.65.1854"}

# --- shared material ------------------------------------------------------------------------


_NOW = time.time()
_CERT = make_cert(key=rsa_key(0), not_before=_NOW - 60, not_after=_NOW + 86400)
GOOD_DER = _CERT.public_bytes(serialization.Encoding.DER)
GOOD_KEY_PEM = key_pem(rsa_key(0))
OTHER_KEY_PEM = key_pem(rsa_key(1))
P12 = pkcs12.serialize_key_and_certificates(
    b"msal", rsa_key(0), _CERT, None, serialization.NoEncryption()
)


def _good_entry_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        store = FileStore(os.path.join(d, "certs"))
        store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
        with open(store.path_for(Identity()), "rb") as f:
            return f.read()


GOOD_ENTRY = _good_entry_bytes()

# --- strategies -------------------------------------------------------------------------------

TRICKY_TEXT = [
    "", " ", "\n", "\r\n", "\x00", "\x85", "\u2028", "\u2029", "\x1c", "\x0b", "\x0c",
    "https://[::1", "https://\uff0fexample.com", "https://", "//host", "https://a\x00b",
    "https://eastus2.mtlsauth.microsoft.com/", "http://maa.example", "ftp://x", "javascript:x",
    "nan", "NaN", "Infinity", "-Infinity", "-1", "0", "0.0", "1e999", "1e-999", "12", " 3600 ",
    "1_000", "0x10", "\u0661\u0662\u0663", "\ufeff", "-----BEGIN CERTIFICATE-----", "-----BEGIN",
    "msicert-entry: 1", "identity: system", "../../etc/passwd", "a/b", "a\\b", "..", "\ud800",
    "x" * 600,
]
# Generating values with Hypothesis costs most of an example's time; a fixed pool of nasty
# values (plus a share of freshly generated ones) keeps 10,000 examples within minutes.
_rng = random.Random(20261127)


def _random_text(n: int) -> str:
    ranges = [(0x20, 0x7F), (0, 0x20), (0x80, 0x800), (0x800, 0x110000)]
    return "".join(chr(_rng.randrange(*_rng.choice(ranges))) for _ in range(n))


_GUIDS = [str(uuid.UUID(int=_rng.getrandbits(128))) for _ in range(4)]
POOL_TEXT = [
    *TRICKY_TEXT, *_GUIDS, _GUIDS[0].upper(), f" {_GUIDS[1]}\n", _GUIDS[2][:-1], _GUIDS[3] + "0",
    *(_random_text(_rng.randrange(1, 40)) for _ in range(40)),
]
POOL_VALUES = [
    *POOL_TEXT, None, True, False, 0, -1, 1, 3600, 2**63, 10**400, -(10**400), 1.5, 1e308,
    -0.0, float("nan"), float("inf"), [], {}, [1, "a"], {"vmId": ""}, {"vmId": 1},
    {"vmId": None, "vmssId": ["x"]}, {"a": {"b": []}}, ["x", ["y", ["z"]]],
]
FIELD_NAMES = ["", "x", "error", "clientid", "ClientId", "certificate ", "cuid", "vmId",
               "token_type", "access_token", "\u0000", "__proto__"]
guids = st.uuids().map(str)
text = st.one_of(st.sampled_from(POOL_TEXT), st.sampled_from(POOL_TEXT), st.text(max_size=12))
json_values = st.one_of(st.sampled_from(POOL_VALUES), st.sampled_from(POOL_VALUES), text,
                        st.integers(), st.floats())
numbers = st.one_of(st.integers(), st.floats(),
                    st.sampled_from([10**400, -(10**400), 2**63, 0, -1, 1e308]))


def documents(good: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """Objects whose known fields are each good, fuzzed or absent, plus unknown fields."""
    fields = st.fixed_dictionaries(
        {}, optional={name: st.one_of(value, value, json_values) for name, value in good.items()}
    )
    extra = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=2)
    return st.builds(lambda e, f: {**e, **f}, extra, fields)


def encoded(docs: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes]:
    """JSON in any encoding json.loads accepts, sometimes damaged, or plain junk bytes."""

    def encode(doc: dict, ascii_only: bool, encoding: str) -> bytes:
        return json.dumps(doc, ensure_ascii=ascii_only).encode(encoding, "surrogatepass")

    clean = st.builds(encode, docs, st.booleans(),
                      st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32", "utf-8-sig"]))
    return st.one_of(
        clean,
        clean,
        st.builds(_mutate, clean, mutations()),
        st.binary(max_size=300),
        st.integers(1, 50_000).map(lambda n: b"[" * n),
        st.integers(1, 20_000).map(lambda n: b'{"a":' * n),
    )


def mutations() -> st.SearchStrategy[list[tuple[str, float, bytes]]]:
    """Byte edits at relative positions: set, delete, insert, truncate."""
    return st.lists(
        st.tuples(st.sampled_from(["set", "del", "ins", "cut"]), st.floats(0, 1),
                  st.binary(min_size=1, max_size=6)),
        min_size=1, max_size=4,
    )


def _mutate(data: bytes, ops: list[tuple[str, float, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, where, blob in ops:
        i = min(int(where * len(buf)), max(0, len(buf) - 1))
        if op == "set" and buf:
            buf[i : i + len(blob)] = blob
        elif op == "del":
            del buf[i : i + len(blob)]
        elif op == "ins":
            buf[i:i] = blob
        elif op == "cut":
            del buf[i:]
    return bytes(buf)


headers = st.one_of(
    st.just(GOOD_SERVER),
    st.just(GOOD_SERVER),
    st.dictionaries(st.sampled_from(["Server", "server", "SERVER", "Content-Type", "X-Other"]),
                    st.one_of(st.just("IMDS/1.0"), st.just("imds"), text),
                    max_size=3),
)
statuses = st.one_of(st.just(200), st.just(200), st.integers(100, 599))

metadata_fields = {
    "clientId": guids,
    "tenantId": guids,
    "cuId": st.fixed_dictionaries({}, optional={"vmId": guids, "vmssId": guids}),
    "attestationEndpoint": st.just("https://maa.example"),
}
good_der_b64 = base64.b64encode(GOOD_DER).decode("ascii")
credential_fields = {
    "client_id": guids,
    "tenant_id": guids,
    "certificate": st.one_of(
        st.just(good_der_b64),
        st.builds(_mutate, st.just(GOOD_DER), mutations()).map(
            lambda d: base64.b64encode(d).decode("ascii")),
        st.just(base64.b64encode(P12).decode("ascii")),
        st.just(good_der_b64.replace("A", "-")), st.just(good_der_b64[:-3]),
    ),
    "identity_type": st.sampled_from(["SystemAssigned", "UserAssigned"]),
    "mtls_authentication_endpoint": st.just("https://eastus2.mtlsauth.microsoft.com/"),
}
token_fields = {
    "token_type": st.sampled_from(["mtls_pop", "MTLS_POP", "Bearer", "pop"]),
    "access_token": st.just("eyJ0eXAi.eyJhdWQi.c2ln"),
    "expires_in": st.one_of(st.integers(-5, 10**6), st.floats(), st.sampled_from(
        ["3600", " 3600 ", "3599.5", "nan", "inf", "-1", "0", "1e999", "x", "1_0"]),
        st.just(10**400)),
    "refresh_in": st.one_of(st.integers(-5, 10**6), st.just("1800"), st.just(10**400)),
    "error": st.sampled_from(["invalid_client", "invalid_request", "temporarily_unavailable"]),
    "error_description": text,
    "correlation_id": guids,
}

# --- IMDS -------------------------------------------------------------------------------------


def _assert_imds_error(exc: ImdsError, status: int) -> None:
    assert type(exc) in (ImdsError, ImdsResponseError), type(exc)
    assert (type(exc) is ImdsResponseError) == (status == 200)
    assert exc.correlation_id == CID and CID in str(exc)
    assert len(str(exc)) < 2000  # a body excerpt, never the body


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    parts = urlsplit(value)
    return parts.scheme.lower() in schemes and bool(parts.netloc)


@FUZZ
@given(status=statuses, hdrs=headers, body=encoded(documents(metadata_fields)))
@example(status=200, hdrs=GOOD_SERVER, body=b"[" * 200_000)
@example(status=200, hdrs=GOOD_SERVER, body=b" " * (MAX_BODY + 1))
@example(status=200, hdrs=GOOD_SERVER, body=json.dumps(
    {"clientId": CID, "tenantId": CID, "cuId": {"vmId": "v"},
     "attestationEndpoint": "https://[::1"}).encode())
def test_getplatformmetadata_parser_returns_valid_metadata_or_a_documented_error(status, hdrs,
                                                                                 body):
    try:
        meta = parse_platform_metadata(status, hdrs, body, CID)
    except ImdsError as exc:
        _assert_imds_error(exc, status)
        return
    assert status == 200
    assert any(k.lower() == "server" and "imds" in v.lower() for k, v in hdrs.items())
    assert is_guid(meta.client_id) and meta.tenant_id and meta.tenant_id == meta.tenant_id.strip()
    assert meta.cuid and set(meta.cuid) <= {"vmId", "vmssId"}
    assert all(isinstance(v, str) and v for v in meta.cuid.values())
    assert _is_url(meta.attestation_endpoint, ("http", "https"))


@SIDE
@given(doc=st.fixed_dictionaries(metadata_fields).filter(lambda d: d["cuId"]),
       extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in metadata_fields),
                             json_values, max_size=3))
def test_every_contract_conforming_metadata_answer_is_accepted(doc, extra):
    meta = parse_platform_metadata(200, GOOD_SERVER, json.dumps({**extra, **doc}).encode(), CID)
    assert (meta.client_id, meta.tenant_id, meta.cuid) == (doc["clientId"], doc["tenantId"],
                                                           doc["cuId"])


@FUZZ
@given(status=statuses, hdrs=headers, body=encoded(documents(credential_fields)))
@example(status=200, hdrs={}, body=b"[" * 200_000)
@example(status=200, hdrs={}, body=json.dumps({
    "client_id": CID, "tenant_id": CID, "certificate": good_der_b64, "identity_type": "x",
    "mtls_authentication_endpoint": "https://\uff0fexample.com"}).encode())
def test_issuecredential_parser_returns_a_loadable_certificate_or_a_documented_error(status,
                                                                                     hdrs, body):
    try:
        issued = parse_issued_credential(status, hdrs, body, CID)
    except ImdsError as exc:
        _assert_imds_error(exc, status)
        return
    assert status == 200
    from msicert._policy import load_certificate

    cert = load_certificate(issued.certificate_der)  # what the client does next cannot fail
    identity_mismatch(cert, Identity(), issuer_cn=ISSUER_CN)
    assert _is_url(issued.mtls_endpoint, ("https",)) and not issued.mtls_endpoint.endswith("/")
    assert all(v and v == v.strip() for v in (issued.client_id, issued.tenant_id,
                                              issued.identity_type))


@FUZZ
@given(der=st.builds(_mutate, st.just(GOOD_DER), mutations()))
def test_any_certificate_issuecredential_accepts_survives_what_the_client_does_with_it(der):
    doc = {"client_id": CID, "tenant_id": CID, "certificate": base64.b64encode(der).decode(),
           "identity_type": "SystemAssigned", "mtls_authentication_endpoint": "https://e.example"}
    try:
        issued = parse_issued_credential(200, {}, json.dumps(doc).encode(), CID)
    except ImdsResponseError as exc:
        assert "X.509" in str(exc) or "certificate" in str(exc)
        return
    from cryptography import x509

    cert = x509.load_der_x509_certificate(issued.certificate_der)  # msicert._mint's steps
    cert.public_key().public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    identity_mismatch(cert, Identity(), issuer_cn=ISSUER_CN, client_id=CID, tenant_id=CID)
    cert.not_valid_before_utc.timestamp()
    cert.not_valid_after_utc.timestamp()


@SIDE
@given(secret=st.text(alphabet="QWXZqwxz0123456789_-", min_size=16, max_size=60),
       before=st.binary(max_size=400), after=st.binary(max_size=50),
       status=st.sampled_from([200, 400, 403, 500]))
def test_an_echoed_attestation_token_never_reaches_an_error_message(secret, before, after,
                                                                    status):
    body = before + secret.encode() + after
    with pytest.raises(ImdsError) as info:
        parse_issued_credential(status, {}, body, CID, redact=(secret,))
    shown = str(info.value) + repr(info.value.body_excerpt)
    assert not any(secret[i : i + 12] in shown for i in range(len(secret) - 11))


@SIDE
@given(value=st.one_of(st.none(), text, numbers.map(str)))
@example(value="nan")
@example(value="-inf")
@example(value="1e999")
def test_retry_after_is_always_a_finite_wait_within_the_cap(value):
    wait = _retry_after(value, 60.0)
    assert math.isfinite(wait) and 0.0 <= wait <= 60.0


# --- ESTS -------------------------------------------------------------------------------------


@FUZZ
@given(status=statuses, body=encoded(documents(token_fields)))
@example(status=200, body=b"[" * 200_000)
@example(status=200, body=b'{"token_type":"mtls_pop","access_token":"t","expires_in":'
         + b"9" * 400 + b"}")
@example(status=400, body=b'{"error":' + b"[" * 900 + b"]" * 900 + b"}")
def test_token_response_parser_returns_a_sane_token_or_a_token_error(status, body):
    try:
        resp = parse_token_response(status, body)
    except TokenError as exc:
        assert type(exc) in (TokenError, EstsRejected)
        if isinstance(exc, EstsRejected):
            assert isinstance(exc.error, str) and isinstance(exc.error_description, str)
        return
    assert status == 200
    assert isinstance(resp.access_token.reveal(), str) and resp.access_token
    assert math.isfinite(resp.expires_in) and resp.expires_in > 0
    assert resp.refresh_in is None or (math.isfinite(resp.refresh_in) and resp.refresh_in > 0)


@SIDE
@given(expires_in=st.one_of(st.integers(1, 10**9), st.floats(0.001, 1e12),
                            st.integers(1, 10**9).map(str)),
       token_type=st.sampled_from(["mtls_pop", "MTLS_POP", "Mtls_PoP"]),
       token=st.text(min_size=1, max_size=100))
def test_every_contract_conforming_token_answer_is_accepted(expires_in, token_type, token):
    body = json.dumps({"token_type": token_type, "access_token": token,
                       "expires_in": expires_in}).encode()
    resp = parse_token_response(200, body)
    assert resp.access_token.reveal() == token and resp.expires_in == float(expires_in)


# --- store files ------------------------------------------------------------------------------

_CERT_BEGIN, _CERT_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
SPLICES = [
    P12,
    b"-----BEGIN PKCS12-----\n" + base64.encodebytes(P12) + b"-----END PKCS12-----\n",
    _CERT_BEGIN + b"\n" + base64.encodebytes(P12) + _CERT_END + b"\n",
    OTHER_KEY_PEM, GOOD_KEY_PEM, _CERT.public_bytes(serialization.Encoding.PEM),
    _CERT_BEGIN, _CERT_END, b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----",
    b"-----BEGIN", b"\xff\xfe", b"\x00", b"\n", b"\r", b"\xc2\x85", b"msicert-entry: 1\n",
    b"identity: client_id=22222222-2222-3333-4444-555555555555\n", b"client_id: \n",
]


def _with_cert_der(data: bytes, der: bytes) -> bytes:
    i, j = data.index(_CERT_BEGIN), data.index(_CERT_END)
    return data[: i + len(_CERT_BEGIN)] + b"\n" + base64.encodebytes(der) + data[j:]


store_bytes = st.one_of(
    st.just(GOOD_ENTRY),
    st.builds(_mutate, st.just(GOOD_ENTRY), mutations()),
    st.builds(lambda ops: _with_cert_der(GOOD_ENTRY, _mutate(GOOD_DER, ops)), mutations()),
    st.builds(lambda ops: _with_cert_der(GOOD_ENTRY, _mutate(P12, ops)), mutations()),
    st.builds(lambda pos, chunks: _splice(GOOD_ENTRY, pos, chunks), st.floats(0, 1),
              st.lists(st.sampled_from(SPLICES), min_size=1, max_size=3)),
    st.builds(lambda head, blocks, tail: head + b"".join(blocks) + tail,
              st.binary(max_size=60) | st.just(GOOD_ENTRY[: GOOD_ENTRY.index(b"-----BEGIN")]),
              st.lists(st.sampled_from(SPLICES), max_size=4), st.binary(max_size=40)),
    st.just(P12),
    st.binary(max_size=400),
)


def _splice(data: bytes, where: float, chunks: list[bytes]) -> bytes:
    i = int(where * len(data))
    return data[:i] + b"".join(chunks) + data[i:]


def _parse(data: bytes, identity: Identity, issuer: str):
    return FileStore("/nonexistent-msicert-fuzz").parse(
        data, identity, issuer_cn=issuer, location="fuzz.pem")


@FUZZ
@given(data=store_bytes, identity=st.sampled_from([Identity(), UAMI]),
       issuer=st.sampled_from([ISSUER_CN, ISSUER_CN.upper(), "other.example"]))
@example(data=GOOD_ENTRY, identity=Identity(), issuer=ISSUER_CN)
@example(data=b" " * (_store_read.MAX_ENTRY_BYTES + 1), identity=Identity(), issuer=ISSUER_CN)
def test_store_parser_returns_a_consistent_entry_or_corrupt_entry(data, identity, issuer):
    _store_read._verified.clear()
    outcomes = []
    for _ in range(2):  # the second parse goes through the per-process "already checked" cache
        try:
            got = _parse(data, identity, issuer)
        except CorruptEntry as exc:
            assert exc.reason and "fuzz.pem" in str(exc)
            outcomes.append(("corrupt", exc.reason))
            continue
        assert got.x5t_s256 == base64.urlsafe_b64encode(
            hashlib.sha256(got.der).digest()).rstrip(b"=").decode()
        assert identity_mismatch(got.certificate, identity, issuer_cn=issuer) is None
        assert got.identity == identity and got.source == "store"
        assert got.to_json()["subject"]  # every lazily parsed part is readable
        outcomes.append(("ok", got.x5t_s256))
    assert outcomes[0] == outcomes[1]
    if data == GOOD_ENTRY and identity == Identity() and issuer.lower() == ISSUER_CN:
        assert outcomes[0][0] == "ok"


# --- store writes -----------------------------------------------------------------------------


@dataclass
class FuzzEntry:
    der: bytes
    key: PemKey
    client_id: str
    tenant_id: str
    mtls_endpoint: str
    identity_type: str


GOOD_NEW = entry()
new_entries = st.builds(
    FuzzEntry,
    der=st.one_of(st.just(GOOD_NEW.der), st.just(GOOD_NEW.der),
                  st.builds(_mutate, st.just(GOOD_NEW.der), mutations()), st.just(P12)),
    key=st.builds(PemKey, st.one_of(
        st.just(pem_of(GOOD_NEW)), st.just(pem_of(GOOD_NEW)),
        st.sampled_from([OTHER_KEY_PEM, P12, b"", b"-----BEGIN PRIVATE KEY-----"]),
        st.builds(_mutate, st.just(pem_of(GOOD_NEW)), mutations()))),
    # mostly good values, so that a fair share of the puts succeeds and is read back
    client_id=st.one_of(st.just(GOOD_NEW.client_id), st.just(GOOD_NEW.client_id), text),
    tenant_id=st.one_of(st.just(GOOD_NEW.tenant_id), st.just(GOOD_NEW.tenant_id), text),
    mtls_endpoint=st.one_of(st.just(GOOD_NEW.mtls_endpoint), st.just(GOOD_NEW.mtls_endpoint),
                            text),
    identity_type=st.one_of(st.just(GOOD_NEW.identity_type), st.just(GOOD_NEW.identity_type),
                            text),
)


@pytest.fixture(scope="module")
def put_store(tmp_path_factory):
    store = FileStore(str(tmp_path_factory.mktemp("fuzzput") / "certs"))
    store.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    with open(store.path_for(Identity()), "rb") as f:
        before = f.read()
    return store, before


def _restore(store: FileStore, data: bytes) -> None:
    path = store.path_for(Identity())
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@FUZZ
@given(new=new_entries)
def test_store_put_stores_exactly_what_it_returns_or_leaves_the_old_file_untouched(put_store,
                                                                                   new):
    store, before = put_store
    path = store.path_for(Identity())
    _store_read._verified.clear()
    try:
        # fsync changes nothing a reader sees and costs ~10 ms: skip it so 10,000 examples fit
        with mock.patch.object(_store_write.os, "fsync", lambda fd: None):
            stored = store.put(Identity(), new, issuer_cn=ISSUER_CN)
    except StoreError as exc:
        assert isinstance(exc, StoreError) and str(exc)
        with open(path, "rb") as f:
            assert f.read() == before
        assert sorted(os.listdir(store.directory)) == ["msal_mtls.pem"]
        return
    try:
        found = store.find(Identity(), issuer_cn=ISSUER_CN)
        assert found is not None and found.x5t_s256 == stored.x5t_s256
        for name in ("client_id", "tenant_id", "mtls_endpoint", "identity_type"):
            assert getattr(found, name) == getattr(stored, name) == getattr(new, name).strip()
        assert found.der == new.der
    finally:
        _restore(store, before)


@pytest.mark.parametrize("syscall,nth", [("fchmod", 1), ("write", 1), ("write", 2),
                                         ("fsync", 1), ("replace", 1), ("fsync", 2)])
def test_a_put_that_fails_at_any_syscall_raises_store_error_and_leaves_no_torn_file(
        tmp_path, monkeypatch, syscall, nth):
    store = FileStore(str(tmp_path / "certs"))
    store.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    path = store.path_for(Identity())
    with open(path, "rb") as f:
        before = f.read()
    real = getattr(os, syscall)
    calls = []

    def failing(*args, **kw):
        calls.append(args)
        if len(calls) == nth:
            raise OSError(errno.EIO, "injected I/O error")
        return real(*args, **kw)

    monkeypatch.setattr(_store_write.os, syscall, failing)
    with pytest.raises(StoreError):
        store.put(Identity(), entry(key_no=2), issuer_cn=ISSUER_CN)
    monkeypatch.undo()
    with open(path, "rb") as f:
        after = f.read()
    if (syscall, nth) == ("fsync", 2):
        # the directory fsync after the rename: the new entry is in place, only its
        # durability is unknown, and the caller is told so
        assert after != before and store.find(Identity(), issuer_cn=ISSUER_CN) is not None
    else:
        assert after == before
    assert [n for n in os.listdir(store.directory) if n.startswith(".")] == []


# --- identities -------------------------------------------------------------------------------

arm_ids = st.builds(lambda a, b: f"/subscriptions/{a}/providers/{b}", text, text)
selector = st.one_of(st.none(), text, guids, arm_ids)
_SAFE_TAG = re.compile(r"[A-Za-z0-9_-]*")


@FUZZ
@given(client_id=selector, object_id=selector, resource_id=selector)
def test_identity_selectors_give_a_valid_identity_with_a_safe_file_tag_or_value_error(
        client_id, object_id, resource_id):
    try:
        ident = Identity.from_selectors(client_id=client_id, object_id=object_id,
                                        resource_id=resource_id)
    except ValueError:
        return
    given_ = [v for v in (client_id, object_id, resource_id) if v is not None]
    assert len(given_) <= 1
    tag = ident.file_tag
    assert _SAFE_TAG.fullmatch(tag), tag
    assert ".." not in tag and "/" not in tag and "\\" not in tag and "\x00" not in tag
    directory = "/store/certs"
    path = FileStore(directory).path_for(ident)
    assert os.path.dirname(path) == directory
    assert os.path.basename(path).startswith("msal_mtls.") and path.endswith(".pem")
    assert len(os.path.basename(path)) < 255
    assert len(ident.query) == (0 if ident.kind == "system" else 1)
    if ident.kind in ("client_id", "object_id"):
        assert is_guid(ident.value) and ident.value == ident.value.lower()


def _resource_identity(value: str) -> Identity | None:
    try:
        return Identity.from_selectors(resource_id=value)
    except ValueError:  # e.g. not valid Unicode: refused up front
        return None


identities = st.builds(lambda kind, v: Identity.from_selectors(**{kind: v}),
                       st.sampled_from(["client_id", "object_id"]), guids) | st.builds(
    _resource_identity, arm_ids.filter(lambda s: s.strip() == s)
).filter(lambda i: i is not None) | st.just(Identity())


@SIDE
@given(a=identities, b=identities)
def test_two_identities_share_a_file_only_when_they_are_the_same_identity(a, b):
    same = a.kind == b.kind and a.value.lower() == b.value.lower()
    assert (a.file_tag == b.file_tag) == same


def test_a_resource_id_that_is_not_valid_unicode_is_refused_up_front():
    with pytest.raises(ValueError):
        Identity.from_selectors(resource_id="/subscriptions/s/providers/x\udcff")


def test_deep_nesting_and_huge_numbers_are_documented_errors_not_crashes():
    """Regression for what the fuzzing above found (RecursionError, OverflowError, ValueError
    from urlsplit, cryptography's lazy-parse errors)."""
    with pytest.raises(ImdsResponseError, match="not JSON"):
        parse_platform_metadata(200, GOOD_SERVER, b"[" * 100_000, CID)
    with pytest.raises(TokenError):
        parse_token_response(200, b"[" * 100_000)
    with pytest.raises(TokenError, match="out-of-range"):
        parse_token_response(200, b'{"token_type":"mtls_pop","access_token":"t","expires_in":'
                             + b"9" * 400 + b"}")
    doc = {"clientId": CID, "tenantId": CID, "cuId": {"vmId": "v"},
           "attestationEndpoint": "https://[::1"}
    with pytest.raises(ImdsResponseError, match="attestationEndpoint"):
        parse_platform_metadata(200, GOOD_SERVER, json.dumps(doc).encode(), CID)
    rsa_oid = bytes.fromhex("2a864886f70d010101")
    unknown_key = GOOD_DER.replace(rsa_oid, bytes.fromhex("2a864886f70d010163"), 1)
    bad_version = bytearray(GOOD_DER)
    bad_version[GOOD_DER.index(b"\xa0\x03\x02\x01\x02") + 4] = 0x74  # X.509 version 117
    for der in (unknown_key, bytes(bad_version)):
        with pytest.raises(CorruptEntry, match="unparsable certificate"):
            _parse(_with_cert_der(GOOD_ENTRY, der), Identity(), ISSUER_CN)
        body = {"client_id": CID, "tenant_id": CID, "identity_type": "x",
                "certificate": base64.b64encode(der).decode(),
                "mtls_authentication_endpoint": "https://e.example"}
        with pytest.raises(ImdsResponseError, match=r"X\.509"):
            parse_issued_credential(200, {}, json.dumps(body).encode(), CID)


def test_resource_ids_differing_only_in_case_share_one_entry(tmp_path):
    upper = Identity.from_selectors(resource_id="/subscriptions/S/providers/Microsoft.X/y/Z")
    lower = Identity.from_selectors(resource_id="/subscriptions/s/providers/microsoft.x/y/z")
    store = FileStore(str(tmp_path / "certs"))
    assert store.path_for(upper) == store.path_for(lower)
    put = store.put(upper, entry(), issuer_cn=ISSUER_CN)
    found = store.find(lower, issuer_cn=ISSUER_CN)
    assert found is not None and found.x5t_s256 == put.x5t_s256
