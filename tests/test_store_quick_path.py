"""The store's quick read path: names compared as DER, the key matched by (n, e).

A first lookup in a process used to build cryptography ``Name`` objects and RFC 4514 strings
and load the private key. It now compares the names with the DER recorded at mint time, reads
the few attribute values the identity rules need with a strict DER reader, and reads the RSA
modulus and exponent from the PKCS#8 DER. Whatever that path does not vouch for goes through
cryptography's parsers, so every entry must get exactly the answer it got before: the
differential tests below compare the two paths on the same bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msicert import Identity, _policy
from msicert._policy import issuer_fragment_in, name_values, vetted_names_mismatch
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix import _store_read
from msicert.backends.posix._file_store import FileStore
from msicert.wire import _der
from tests.certgen import CLIENT, ISSUER_CN, TENANT, der, key_pem, rsa_key
from tests.store_contract import UAMI, Entry, PemKey, entry

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning"  # cryptography warns about odd names it still loads (a long CN)
)

CN, DC, ORG, OU, C = (NameOID.COMMON_NAME, NameOID.DOMAIN_COMPONENT,
                      NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                      NameOID.COUNTRY_NAME)
Printable = x509.name._ASN1Type.PrintableString
BMP = x509.name._ASN1Type.BMPString


def _oid(o: x509.ObjectIdentifier) -> bytes:
    return _der.oid(o.dotted_string)[2:]


def _rdn(
    *attrs: tuple[x509.ObjectIdentifier, str] | x509.NameAttribute[str],
) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([
        a if isinstance(a, x509.NameAttribute) else x509.NameAttribute(a[0], a[1]) for a in attrs
    ])


def _name(*rdns: x509.RelativeDistinguishedName) -> x509.Name:
    return x509.Name(list(rdns))


# --- name_values: what cryptography reads, or None ----------------------------------------

READABLE = {
    "issuer CN only": _name(_rdn((CN, ISSUER_CN))),
    "subject DC then CN": _name(_rdn((DC, TENANT)), _rdn((CN, CLIENT))),
    "extra RDNs around CN": _name(_rdn((C, "US")), _rdn((ORG, "Microsoft")), _rdn((CN, ISSUER_CN)),
                                  _rdn((OU, "Identity"))),
    "multi-valued RDN": _name(_rdn((ORG, "Microsoft"), (CN, ISSUER_CN))),
    "PrintableString value": _name(
        _rdn(x509.NameAttribute(CN, "Printable (ok) =,+/:?", Printable))),
    "UTF-8 value": _name(_rdn((CN, "émetteur ✓ managedidentitysnissuer"))),
    "empty name": _name(),
    "two CNs": _name(_rdn((CN, "a")), _rdn((CN, "b"))),
}


@pytest.mark.parametrize("case", sorted(READABLE))
def test_name_values_reads_what_cryptography_reads(case):
    name = READABLE[case]
    cert = make_named_cert(subject=name)  # cryptography parses the name out of a certificate
    expected = [(_oid(attr.oid), attr.value) for attr in cert.subject]
    assert name_values(name.public_bytes()) == expected


def _tlv(tag: int, body: bytes) -> bytes:
    return _der.tlv(tag, body)


def _atv(oid: bytes, tag: int, value: bytes) -> bytes:
    return _tlv(0x30, _tlv(0x06, oid) + _tlv(tag, value))


_CN_OID = _oid(CN)
GOOD_ATV = _atv(_CN_OID, 0x0C, b"issuer")

UNREADABLE = {
    # string types read differently by cryptography (or not strings at all)
    "BMPString": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x1E, "x".encode("utf-16-be")))),
    "TeletexString": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x14, b"x"))),
    "unknown value tag": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x04, b"x"))),
    # values invalid for their type
    "invalid UTF-8": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x0C, b"\xff\xfe"))),
    "PrintableString with @": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x13, b"a@b"))),
    "IA5String not ASCII": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x16, b"\xe9"))),
    # lengths cryptography warns about
    "empty CN": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x0C, b""))),
    "CN of 65 bytes": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x0C, b"x" * 65))),
    "country of 3 letters": _tlv(0x30, _tlv(0x31, _atv(_oid(C), 0x13, b"USA"))),
    # structure
    "empty RDN": _tlv(0x30, _tlv(0x31, b"")),
    "unsorted multi-valued RDN": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x0C, b"z")
                                                + _atv(_CN_OID, 0x0C, b"a"))),
    "duplicate attribute in an RDN": _tlv(0x30, _tlv(0x31, GOOD_ATV + GOOD_ATV)),
    "same value, two string types": _tlv(0x30, _tlv(0x31, _atv(_CN_OID, 0x0C, b"a")
                                                   + _atv(_CN_OID, 0x13, b"a"))),
    "OID arc with a leading 0x80": _tlv(0x30, _tlv(0x31, _atv(b"\x55\x80\x03", 0x0C, b"x"))),
    "OID ending mid-arc": _tlv(0x30, _tlv(0x31, _atv(b"\x55\x04\x83", 0x0C, b"x"))),
    "non-minimal length": b"\x30\x81\x0f" + _tlv(0x31, GOOD_ATV),
    "trailing bytes": _tlv(0x30, _tlv(0x31, GOOD_ATV)) + b"\x00",
    "truncated": _tlv(0x30, _tlv(0x31, GOOD_ATV))[:-1],
    "RDN is a SEQUENCE": _tlv(0x30, _tlv(0x30, GOOD_ATV)),
    "attribute value after the end": _tlv(0x30, _tlv(0x31, _tlv(0x30, _tlv(0x06, _CN_OID)))),
    "indefinite length": b"\x30\x80" + _tlv(0x31, GOOD_ATV) + b"\x00\x00",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_name_values_refuses_what_it_cannot_vouch_for(case):
    assert name_values(UNREADABLE[case]) is None


def test_name_values_accepts_the_handmade_good_name_the_refusals_start_from():
    assert name_values(_tlv(0x30, _tlv(0x31, GOOD_ATV))) == [(_CN_OID, "issuer")]


# --- the identity rules on those values ---------------------------------------------------

@pytest.mark.parametrize(("values", "expected", "found"), [
    (["managedidentitysnissuer.login.microsoft.com"], ISSUER_CN, True),
    (["MANAGEDIDENTITYSNISSUER.LOGIN.MICROSOFT.COM"], ISSUER_CN, True),  # either side's case
    (["managedidentitysnissuer.login.microsoft.com"], ISSUER_CN.upper(), True),
    (["Microsoft", "US", "x.managedidentitysnissuer.login.microsoft.com.y"], ISSUER_CN, True),
    (["managedidentitysnissuer.login.microsoft"], ISSUER_CN, False),  # a fragment of it
    (["other.example"], ISSUER_CN, False),
    ([], ISSUER_CN, False),
    (["anything"], "  ", False),  # an empty expectation matches nothing
    (["managedidentitysnissuer.login.microsoft.com"], f"  {ISSUER_CN}\t", True),  # stripped
])
def test_issuer_fragment_in_is_a_case_insensitive_fragment_of_one_value(values, expected,
                                                                        found):
    assert issuer_fragment_in(values, expected) is found


SUBJECT = [(_oid(DC), TENANT), (_oid(CN), CLIENT)]
ISSUER = [(_oid(CN), ISSUER_CN)]


@pytest.mark.parametrize(("subject", "issuer", "identity", "issuer_cn", "reason"), [
    (SUBJECT, ISSUER, Identity(), ISSUER_CN, None),
    (SUBJECT, ISSUER, Identity(), ISSUER_CN.upper(), None),
    (SUBJECT, [(_oid(ORG), "Microsoft"), *ISSUER, (_oid(C), "US")], Identity(), ISSUER_CN, None),
    (SUBJECT, ISSUER, Identity.from_selectors(client_id=CLIENT), ISSUER_CN, None),
    (SUBJECT, ISSUER, Identity.from_selectors(client_id=CLIENT.upper()), ISSUER_CN, None),
    (SUBJECT, ISSUER, UAMI, ISSUER_CN, "another client id"),
    ([(_oid(DC), TENANT)], ISSUER, Identity.from_selectors(client_id=CLIENT), ISSUER_CN,
     "another client id"),  # no CN
    ([*SUBJECT, (_oid(CN), CLIENT)], ISSUER, Identity.from_selectors(client_id=CLIENT),
     ISSUER_CN, "another client id"),  # two CNs: not one client id
    (SUBJECT, [(_oid(CN), "other.example")], Identity(), ISSUER_CN, "issuer"),
    (SUBJECT, [], Identity(), ISSUER_CN, "issuer"),
    # needle spanning attributes: refused here, the caller confirms with identity_mismatch
    (SUBJECT, ISSUER, Identity(), f"CN={ISSUER_CN}", "issuer"),
])
def test_vetted_names_mismatch_applies_the_vetted_rules(subject, issuer, identity, issuer_cn,
                                                        reason):
    why = vetted_names_mismatch(subject, issuer, identity, issuer_cn=issuer_cn)
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


def test_vetted_names_mismatch_never_accepts_what_identity_mismatch_refuses():
    now = time.time()
    issuers = [_name(_rdn((CN, ISSUER_CN))), _name(_rdn((CN, "other.example"))),
               _name(_rdn((ORG, "Microsoft"), (CN, ISSUER_CN.upper()))),
               _name(_rdn((C, "US")), _rdn((CN, "IMDS-test-CA")))]
    subjects = [_name(_rdn((DC, TENANT)), _rdn((CN, CLIENT))),
                _name(_rdn((DC, TENANT)), _rdn((CN, "22222222-2222-3333-4444-555555555555")))]
    identities = [Identity(), UAMI, Identity.from_selectors(client_id=CLIENT)]
    for subject in subjects:
        for issuer in issuers:
            cert = make_named_cert(subject=subject, issuer=issuer, now=now)
            for identity in identities:
                for issuer_cn in (ISSUER_CN, "imds-test-ca", "CN=IMDS", "microsoft"):
                    quick = vetted_names_mismatch(
                        name_values(subject.public_bytes()) or [],
                        name_values(issuer.public_bytes()) or [], identity,
                        issuer_cn=issuer_cn)
                    full = _policy.identity_mismatch(cert, identity, issuer_cn=issuer_cn,
                                                     subject_vetted=True)
                    if quick is None:
                        assert full is None, (subject, issuer, identity, issuer_cn)
                    elif full is None:  # only a needle spanning attributes may differ
                        assert "=" in issuer_cn, (subject, issuer, identity, issuer_cn)
                    elif isinstance(quick, _policy.IssuerMismatch):
                        # The quick path only says "no"; the full check words the refusal
                        # (issuer found vs expected) when the store falls back to it.
                        assert isinstance(full, _policy.IssuerMismatch), (quick, full)
                    else:
                        assert quick == full and type(quick) is type(full) is _policy.Mismatch


# --- the store: quick path and thorough path agree ----------------------------------------

def make_named_cert(*, subject: x509.Name, issuer: x509.Name | None = None, key=None,
                    now: float | None = None) -> x509.Certificate:
    now = time.time() if now is None else now
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else _name(_rdn((CN, ISSUER_CN))))
        .public_key((key or rsa_key(0)).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.timezone.utc))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.timezone.utc))
        .sign(rsa_key(9), hashes.SHA256())
    )


def _outcome(data: bytes, identity: Identity, issuer_cn: str, *,
             thorough: bool) -> tuple[object, ...]:
    _store_read._verified.clear()
    try:
        got = _store_read.parse_entry(data, identity, issuer_cn, "entry.pem", digest=None,
                                      thorough=thorough)
    except CorruptEntry as exc:
        return ("corrupt", exc.reason)
    except Exception as exc:  # the two paths must fail alike, whatever the failure
        return ("error", type(exc).__name__)
    return ("ok", got.x5t_s256, got.client_id, got.tenant_id, got.mtls_endpoint,
            got.identity_type, got.not_before_ts, got.not_after_ts, got.renew_after_ts,
            got.cert_pem, got.store, got.source, got.key, got.to_json()["subject"])


def _both(data: bytes, identity: Identity | None = None,
          issuer_cn: str = ISSUER_CN) -> tuple[object, ...]:
    identity = identity or Identity()
    quick = _outcome(data, identity, issuer_cn, thorough=False)
    thorough = _outcome(data, identity, issuer_cn, thorough=True)
    assert quick == thorough
    return quick


def _stored_bytes(tmp_path: Path, cert: x509.Certificate | None = None, key=None,
                  client_id: str = CLIENT) -> bytes:
    store = FileStore(str(tmp_path / "made"))
    if cert is None:
        e = entry()
    else:
        e = Entry(der=der(cert), key=PemKey(key_pem(key or rsa_key(0))), client_id=client_id)
    store.put(Identity(), e, issuer_cn=ISSUER_CN)
    data = Path(store.path_for(Identity())).read_bytes()
    os.unlink(store.path_for(Identity()))
    return data


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "certs"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    return _stored_bytes(tmp_path_factory.mktemp("good"))


def _key_body(data: bytes) -> tuple[int, int]:
    start = data.index(b"-----BEGIN PRIVATE KEY-----\n") + len(b"-----BEGIN PRIVATE KEY-----\n")
    return start, data.index(b"-----END PRIVATE KEY-----")


def _rewrap_key(data: bytes, width: int, newline: bytes = b"\n") -> bytes:
    start, stop = _key_body(data)
    text = data[start:stop].replace(b"\n", b"")
    lines = [text[i : i + width] for i in range(0, len(text), width)]
    return data[:start - 1] + newline + newline.join(lines) + newline + data[stop:]


def _key_der(data: bytes) -> bytes:
    start, stop = _key_body(data)
    return base64.b64decode(data[start:stop])


def _with_key_der(data: bytes, new: bytes) -> bytes:
    start, stop = _key_body(data)
    text = base64.b64encode(new)
    body = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\n"
    return data[:start] + body + data[stop:]


def _noncanonical_last_char(data: bytes) -> bytes:
    start, stop = _key_body(data)
    body = data[start:stop]
    i = body.rstrip(b"=\n").__len__() - 1  # the last data character carries unused bits
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    flipped = alphabet[alphabet.index(body[i]) ^ 1]
    return data[:start] + body[:i] + bytes([flipped]) + body[i + 1 :] + data[stop:]


def _pkcs8_key_with_bad_integer(data: bytes) -> bytes:
    # the last INTEGER (q^-1 mod p) with a non-minimal leading zero and the lengths fixed up
    key = rsa_key(0)
    numbers = key.private_numbers()
    ints = [0, numbers.public_numbers.n, numbers.public_numbers.e, numbers.d, numbers.p,
            numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp]
    body = b"".join(_der.integer(i) for i in ints[:-1])
    last = ints[-1].to_bytes(ints[-1].bit_length() // 8 + 1, "big")
    body += _der.tlv(0x02, b"\x00" + last)  # last[0] < 0x80: the zero byte is one too many
    rsa_der = _der.sequence(body)
    pkcs8 = _der.sequence(_der.integer(0), bytes.fromhex("300d06092a864886f70d0101010500"),
                          _der.tlv(0x04, rsa_der))
    return _with_key_der(data, pkcs8)


MANGLED = {
    "good": lambda d: d,
    "key: CRLF line ends": lambda d: _rewrap_key(d, 64, b"\r\n"),
    "key: 76-character lines": lambda d: _rewrap_key(d, 76),
    "key: one line": lambda d: _rewrap_key(d, 10_000),
    "key: non-canonical last character": _noncanonical_last_char,
    "key: another RSA key": lambda d: d.replace(
        d[d.index(b"-----BEGIN PRIVATE KEY-----"):d.index(b"-----END PRIVATE KEY-----\n") + 26],
        key_pem(rsa_key(5))),
    "key: an EC key": lambda d: d.replace(
        d[d.index(b"-----BEGIN PRIVATE KEY-----"):d.index(b"-----END PRIVATE KEY-----\n") + 26],
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
    "key: trailing DER bytes": lambda d: _with_key_der(d, _key_der(d) + b"\x00"),
    "key: truncated DER": lambda d: _with_key_der(d, _key_der(d)[:-10]),
    "key: garbled header": lambda d: d[: _key_body(d)[0]] + b"A" * 64
    + d[_key_body(d)[0] + 64 :],
    "key: non-minimal INTEGER": _pkcs8_key_with_bad_integer,
    "key: a base64 character removed": lambda d: d[: _key_body(d)[0] + 100]
    + d[_key_body(d)[0] + 101 :],
    "key: a stray character in the base64": lambda d: d[: _key_body(d)[0] + 100] + b"*"
    + d[_key_body(d)[0] + 100 :],
    "names: recorded subject of another entry": lambda d: d.replace(
        b"subject: ", b"subject: MAA=\nignored: ", 1),
    "names: recorded issuer not base64": lambda d: d.replace(b"issuer: ", b"issuer: *", 1),
    "names: no recorded names (an older file)": lambda d: b"".join(
        line for line in d.splitlines(keepends=True)
        if not line.startswith((b"subject:", b"issuer:"))),
    "names: only the subject recorded": lambda d: b"".join(
        line for line in d.splitlines(keepends=True) if not line.startswith(b"issuer:")),
    "another identity": lambda d: d.replace(b"identity: system", b"identity: object_id=x"),
}


@pytest.mark.parametrize("case", sorted(MANGLED))
@pytest.mark.parametrize("identity", [Identity(), UAMI, Identity.from_selectors(client_id=CLIENT)],
                         ids=["system", "other-client-id", "client-id"])
def test_quick_and_thorough_paths_give_the_same_answer(good, case, identity):
    _both(MANGLED[case](good), identity)


def test_the_good_entry_is_accepted_and_the_mangled_keys_are_refused(good):
    assert _both(good)[0] == "ok"
    assert _both(_rewrap_key(good, 76))[0] == "ok"  # cryptography reads it: so do we
    assert _both(MANGLED["key: another RSA key"](good)) == (
        "corrupt", "private key does not match the certificate")
    assert _both(MANGLED["key: non-minimal INTEGER"](good)) == (
        "corrupt", "unparsable private key")


ISSUERS = {
    "extra RDNs": _name(_rdn((C, "US")), _rdn((ORG, "Microsoft")), _rdn((CN, ISSUER_CN))),
    "multi-valued RDN": _name(_rdn((ORG, "Microsoft"), (CN, ISSUER_CN))),
    "upper case": _name(_rdn((CN, ISSUER_CN.upper()))),
    "BMPString (read by cryptography only)": _name(_rdn(x509.NameAttribute(CN, ISSUER_CN, BMP))),
    "wrong issuer": _name(_rdn((CN, "other.example"))),
    "fragment inside a longer value": _name(_rdn((CN, f"x.{ISSUER_CN}.y"))),
}


@pytest.mark.parametrize("case", sorted(ISSUERS))
@pytest.mark.parametrize("issuer_cn", [ISSUER_CN, ISSUER_CN.upper(), f"CN={ISSUER_CN}",
                                       f"O=Microsoft+CN={ISSUER_CN}", "other.example"])
def test_issuers_are_judged_alike_on_both_paths(tmp_path, case, issuer_cn):
    cert = make_named_cert(subject=_name(_rdn((DC, TENANT)), _rdn((CN, CLIENT))),
                           issuer=ISSUERS[case])
    data = _stored_bytes(tmp_path, cert) if case != "wrong issuer" else None
    if data is None:  # put refuses it: plant it by hand from a good entry's shape
        good_cert = make_named_cert(subject=_name(_rdn((DC, TENANT)), _rdn((CN, CLIENT))))
        data = _stored_bytes(tmp_path, good_cert)
        data = _swap_cert(data, cert)
    outcome = _both(data, Identity(), issuer_cn)
    accepted = outcome[0] == "ok"
    if case == "wrong issuer":
        assert accepted is (issuer_cn == "other.example")
    elif issuer_cn == "other.example":
        assert not accepted


def _swap_cert(data: bytes, cert: x509.Certificate) -> bytes:
    """The entry with its certificate (and recorded names) replaced by ``cert``'s."""
    start = data.index(b"-----BEGIN CERTIFICATE-----")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    lines = []
    for line in data[:start].splitlines(keepends=True):
        if line.startswith(b"subject:"):
            line = b"subject: " + base64.b64encode(cert.subject.public_bytes()) + b"\n"
        elif line.startswith(b"issuer:"):
            line = b"issuer: " + base64.b64encode(cert.issuer.public_bytes()) + b"\n"
        lines.append(line)
    return b"".join(lines) + data[start:].replace(
        data[start : data.index(b"-----END CERTIFICATE-----") + 26], pem)


def test_a_first_lookup_loads_no_key_object_and_builds_no_name_strings(store, monkeypatch):
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    calls: list[str] = []
    real_key, real_cert = serialization.load_pem_private_key, _policy.load_certificate
    monkeypatch.setattr(serialization, "load_pem_private_key",
                        lambda *a, **k: calls.append("key") or real_key(*a, **k))
    monkeypatch.setattr(_policy, "load_certificate",
                        lambda der: calls.append("cert") or real_cert(der))
    monkeypatch.setattr(x509.Name, "rfc4514_string",
                        lambda self, *a: calls.append("rfc4514") or "")
    for _ in range(3):
        _store_read._verified.clear()
        _store_read._parsed.clear()
        got = FileStore(store.directory).find(Identity(), issuer_cn=ISSUER_CN)
        assert got is not None and got.source == "store"
    assert calls == []
    assert len(_store_read._verified) == 1


def test_an_older_entry_without_recorded_names_takes_the_thorough_path(good, monkeypatch):
    old = MANGLED["names: no recorded names (an older file)"](good)
    calls: list[bool] = []
    real = serialization.load_pem_private_key
    monkeypatch.setattr(serialization, "load_pem_private_key",
                        lambda *a, **k: calls.append(k["unsafe_skip_rsa_key_validation"])
                        or real(*a, **k))
    assert _outcome(old, Identity(), ISSUER_CN, thorough=False)[0] == "ok"
    assert calls == [True]


def test_the_memos_hold_digests_and_names_never_key_bytes(store, good):
    _store_read._verified.clear()
    _store_read._parsed.clear()
    Path(store.directory).mkdir(mode=0o700, parents=True)
    fd = os.open(store.path_for(Identity()), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, good)
    os.close(fd)
    assert store.find(Identity(), issuer_cn=ISSUER_CN) is not None
    (marker,) = _store_read._verified
    assert len(marker[0]) == 32 and marker[1:] == ("system", ISSUER_CN)
    key_der = _key_der(good)
    memo_bytes = [m for m in marker if isinstance(m, bytes)]
    memo_bytes += [k[0] for k in _store_read._parsed]
    memo_bytes += list(_policy._good_oids)
    for chunk in memo_bytes:
        for i in range(0, len(key_der) - 16, 16):
            assert key_der[i : i + 16] not in chunk


# --- differential fuzzing of the two paths --------------------------------------------------

@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(region=st.sampled_from(["key", "cert", "head"]), at=st.floats(0, 1),
       op=st.sampled_from(["flip", "delete", "insert", "dup-line"]), byte=st.integers(0, 255))
def test_fuzzed_entries_get_the_same_answer_on_both_paths(good, region, at, op, byte):
    if region == "key":
        lo, hi = _key_body(good)
    elif region == "cert":
        lo = good.index(b"-----BEGIN CERTIFICATE-----\n") + 28
        hi = good.index(b"-----END CERTIFICATE-----")
    else:
        lo, hi = 0, good.index(b"-----BEGIN")
    i = lo + int(at * (hi - lo - 1))
    if op == "flip":
        data = good[:i] + bytes([good[i] ^ (byte or 1)]) + good[i + 1 :]
    elif op == "delete":
        data = good[:i] + good[i + 1 :]
    elif op == "insert":
        data = good[:i] + bytes([byte]) + good[i:]
    else:
        start = good.rfind(b"\n", 0, i) + 1
        stop = good.index(b"\n", i) + 1
        data = good[:stop] + good[start:stop] + good[stop:]
    _both(data)
    _both(data, UAMI)


def test_an_unexpected_failure_in_the_key_reader_leaves_no_key_bytes_in_its_frame(good,
                                                                                   monkeypatch):
    from msicert._secret import Secret

    def boom(*args: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(_policy, "der_element", boom)
    start = good.index(b"-----BEGIN PRIVATE KEY-----")
    stop = good.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----")
    with pytest.raises(RuntimeError) as info:
        _store_read._rsa_public_numbers(Secret(good[start:stop]))
    frames = []
    tb = info.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    (frame,) = [f for f in frames if f.f_code.co_name == "_rsa_public_numbers"]
    key_der = _key_der(good)
    for name, value in frame.f_locals.items():
        if isinstance(value, bytes) and name != "key_block":
            assert value[:64] not in good[start:stop] or not value, name
            assert key_der[40:80] not in value, name
