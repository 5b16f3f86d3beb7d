"""What msicert accepts from issuecredential, and how a stored entry is identified afterwards.

References: MSAL.NET ``WindowsCngKeyOperations.cs`` (issuer: a case-insensitive fragment of
the issuer DN), ``ImdsV2Tests.cs`` ``mTLSPop_SubjectCnDc_MatchesMetadata_AndCaches`` (CN of the
system-assigned identity is ``system_assigned_managed_identity``, DC the tenant),
``CertificateRequestResponse.cs`` / ``CsrMetadata.cs`` (required fields); MSAL Go PR #662
``imdsv2.go`` (GUID client ids, https-only mTLS endpoint, bare host:port gets https://).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from msicert import Identity, ImdsResponseError
from msicert._policy import SYSTEM_ASSIGNED_CN, identity_mismatch
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix._file_store import FileStore
from msicert.wire._imds_answers import (
    mtls_endpoint,
    parse_issued_credential,
    parse_platform_metadata,
)
from tests.certgen import CLIENT, ISSUER_CN, TENANT, der, key_pem, rsa_key
from tests.store_contract import PemKey

NOW = time.time()
OTHER = "99999999-8888-7777-6666-555555555555"
UAMI = Identity.from_selectors(client_id=CLIENT)


def cert(subject: list[tuple[x509.ObjectIdentifier, str]],
         issuer: list[tuple[x509.ObjectIdentifier, str]] | None = None) -> x509.Certificate:
    def name(pairs: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
        return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)])
                          for o, v in pairs])

    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer or [(NameOID.COMMON_NAME, ISSUER_CN)]))
        .public_key(rsa_key(0).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(NOW - 60, dt.timezone.utc))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + 3600, dt.timezone.utc))
        .sign(rsa_key(9), hashes.SHA256())
    )


DC, CN, ORG = NameOID.DOMAIN_COMPONENT, NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME


# --- issuer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("issuer", [
    [(CN, ISSUER_CN)],
    [(CN, ISSUER_CN.upper())],
    [(DC, "com"), (DC, "microsoft"), (CN, ISSUER_CN)],  # extra RDNs, any order
    [(CN, ISSUER_CN), (ORG, "Microsoft Corporation")],
])
def test_issuer_is_matched_as_a_case_insensitive_fragment_of_the_dn(issuer):
    c = cert([(DC, TENANT), (CN, CLIENT)], issuer)
    assert identity_mismatch(c, Identity(), client_id=CLIENT, tenant_id=TENANT) is None


def test_an_issuer_without_the_expected_name_is_refused():
    c = cert([(DC, TENANT), (CN, CLIENT)], [(CN, "imds-test-ca")])
    assert "issuer" in identity_mismatch(c, Identity(), client_id=CLIENT, tenant_id=TENANT)
    assert identity_mismatch(c, Identity(), issuer_cn="IMDS-test-CA", client_id=CLIENT) is None


# --- subject -----------------------------------------------------------------------------------
def test_cn_may_be_the_client_id_of_either_imds_answer_without_case():
    c = cert([(DC, TENANT), (CN, OTHER.upper())])
    assert identity_mismatch(c, Identity(), client_id=(CLIENT, OTHER), tenant_id=TENANT) is None
    assert "client id" in identity_mismatch(c, Identity(), client_id=(CLIENT,), tenant_id=TENANT)


def test_system_identity_also_accepts_the_literal_msal_net_tests_expect():
    c = cert([(CN, SYSTEM_ASSIGNED_CN), (DC, TENANT)])
    assert identity_mismatch(c, Identity(), client_id=CLIENT, tenant_id=TENANT) is None
    assert identity_mismatch(c, Identity()) is None
    by_object = Identity.from_selectors(object_id=OTHER)
    assert "client id" in identity_mismatch(c, by_object, client_id=CLIENT, tenant_id=TENANT)
    assert "another client id" in identity_mismatch(c, UAMI, client_id=CLIENT)


def test_dc_must_be_the_tenant_and_both_parts_must_be_there():
    good = cert([(DC, TENANT.upper()), (CN, CLIENT), (ORG, "extra")])
    assert identity_mismatch(good, UAMI, client_id=CLIENT, tenant_id=TENANT) is None
    assert "tenant" in identity_mismatch(good, UAMI, client_id=CLIENT, tenant_id=OTHER)
    no_dc = cert([(CN, CLIENT)])
    assert "CN=<client id>, DC=<tenant>" in identity_mismatch(no_dc, UAMI)
    two_cn = cert([(DC, TENANT), (CN, CLIENT), (CN, OTHER)])
    assert "CN=<client id>, DC=<tenant>" in identity_mismatch(two_cn, UAMI)


# --- store: identified by the names recorded at mint time ---------------------------------------
class _Entry:
    def __init__(self, c: x509.Certificate) -> None:
        self.der, self.key = der(c), PemKey(key_pem(rsa_key(0)))
        self.client_id, self.tenant_id = CLIENT, TENANT
        self.mtls_endpoint, self.identity_type = "https://mtls.example", "SystemAssigned"


def test_a_service_chosen_subject_form_never_makes_the_stored_entry_corrupt(tmp_path):
    store = FileStore(str(tmp_path / "certs"))
    odd = cert([(CN, SYSTEM_ASSIGNED_CN), (ORG, "whatever IMDS adds"), (DC, TENANT)],
               [(DC, "login"), (CN, ISSUER_CN.upper())])
    put = store.put(Identity(), _Entry(odd), issuer_cn=ISSUER_CN)
    text = Path(store.path_for(Identity())).read_text(encoding="utf-8")
    assert f"subject: {base64.b64encode(odd.subject.public_bytes()).decode()}\n" in text
    assert f"issuer: {base64.b64encode(odd.issuer.public_bytes()).decode()}\n" in text
    assert FileStore(str(tmp_path / "certs")).find(
        Identity(), issuer_cn=ISSUER_CN).x5t_s256 == put.x5t_s256


def test_an_entry_whose_recorded_subject_was_altered_is_corrupt(tmp_path):
    store = FileStore(str(tmp_path / "certs"))
    store.put(Identity(), _Entry(cert([(DC, TENANT), (CN, CLIENT)])), issuer_cn=ISSUER_CN)
    path = store.path_for(Identity())
    data = Path(path).read_bytes()
    other = base64.b64encode(cert([(DC, TENANT), (CN, OTHER)]).subject.public_bytes())
    lines = [(b"subject: " + other if line.startswith(b"subject: ") else line)
             for line in data.split(b"\n")]
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    with pytest.raises(CorruptEntry, match="subject differs from the one recorded"):
        FileStore(str(tmp_path / "certs")).find(Identity(), issuer_cn=ISSUER_CN)


def test_an_entry_written_before_names_were_recorded_still_loads(tmp_path):
    c = cert([(DC, TENANT), (CN, CLIENT)])
    store = FileStore(str(tmp_path / "certs"))
    store.put(Identity(), _Entry(c), issuer_cn=ISSUER_CN)
    path = store.path_for(Identity())
    old = b"\n".join(line for line in Path(path).read_bytes().split(b"\n")
                     if not line.startswith((b"subject: ", b"issuer: ")))
    with open(path, "wb") as f:
        f.write(old)
    assert b"subject:" not in Path(path).read_bytes()
    found = FileStore(str(tmp_path / "certs")).find(Identity(), issuer_cn=ISSUER_CN)
    assert found is not None and found.client_id == CLIENT
    with pytest.raises(CorruptEntry, match="issuer"):
        FileStore(str(tmp_path / "certs")).find(Identity(), issuer_cn="other.example")


# --- mtls_authentication_endpoint ---------------------------------------------------------------
@pytest.mark.parametrize(("raw", "url"), [
    ("https://centraluseuap.mtlsauth.microsoft.com", "https://centraluseuap.mtlsauth.microsoft.com"),
    ("https://mtls.example/", "https://mtls.example"),
    ("HTTPS://mtls.example:8443/base/", "https://mtls.example:8443/base"),
    ("mtls.example", "https://mtls.example"),
    ("127.0.0.1:4443", "https://127.0.0.1:4443"),
    ("[::1]:4443", "https://[::1]:4443"),
])
def test_mtls_endpoint_is_https_and_a_bare_host_gets_https(raw, url):
    assert mtls_endpoint(raw) == url


@pytest.mark.parametrize(("raw", "why"), [
    ("http://fake_mtls_authentication_endpoint", "plain http"),
    ("http://mtls.example:80", "plain http"),
    ("ftp://mtls.example", "not https"),
    ("https://user@mtls.example", "userinfo"),
    ("https://mtls.example/?x=1", "query or fragment"),
    ("https://mtls.example#frag", "query or fragment"),
    ("https:\\\\mtls.example", "backslash"),
    ("https://mtls\x00.example", "control"),
    ("https://mtls.ex ample", "space"),
    ("https://", "port"),  # read as https://https: (a bare host "https:" with no port)
    ("https://:443", "no host"),
    ("https://mtls.example:", "malformed port"),
    ("https://mtls.example:99999", "not a URL"),
])
def test_mtls_endpoint_refuses_anything_but_an_https_origin(raw, why):
    with pytest.raises(ImdsResponseError, match="mtls_authentication_endpoint") as info:
        mtls_endpoint(raw)
    assert why in str(info.value)


# --- identity fields from IMDS ------------------------------------------------------------------
def _metadata(**over: object) -> bytes:
    doc = {"cuId": {"vmId": "vm-1"}, "clientId": CLIENT, "tenantId": TENANT,
           "attestationEndpoint": "https://attestation.example"}
    doc.update(over)
    return json.dumps(doc).encode()


def _issued(**over: object) -> bytes:
    doc = {"client_id": CLIENT, "tenant_id": TENANT,
           "certificate": base64.b64encode(der(cert([(DC, TENANT), (CN, CLIENT)]))).decode(),
           "identity_type": "SystemAssigned", "mtls_authentication_endpoint": "mtls.example"}
    doc.update(over)
    return json.dumps(doc).encode()


SERVER = {"Server": "IMDS/150.870.65.1854"}


@pytest.mark.parametrize("tenant", [TENANT, TENANT.upper(), "contoso.onmicrosoft.com"])
def test_tenant_may_be_a_guid_or_a_domain_name(tenant):
    assert parse_platform_metadata(200, SERVER, _metadata(tenantId=tenant), "c").tenant_id \
        == tenant
    assert parse_issued_credential(200, {}, _issued(tenant_id=tenant), "c").tenant_id == tenant


@pytest.mark.parametrize("tenant", [
    "../../evil", "a/b", "t?x=1", "t#f", "t%2f", "tenant id", "ténant.example", "common",
    "-x.example", "a" * 250 + ".com", "x.123",
])
def test_a_tenant_that_could_break_a_url_path_or_the_der_encoder_is_refused(tenant):
    with pytest.raises(ImdsResponseError, match="tenantId is neither a GUID"):
        parse_platform_metadata(200, SERVER, _metadata(tenantId=tenant), "c")
    with pytest.raises(ImdsResponseError, match="tenant_id is neither a GUID"):
        parse_issued_credential(200, {}, _issued(tenant_id=tenant), "c")


@pytest.mark.parametrize("client_id", ["client_id", "system_assigned_managed_identity",
                                       CLIENT + "/x", "{" + CLIENT + "}"])
def test_client_ids_from_imds_must_be_guids(client_id):
    with pytest.raises(ImdsResponseError, match="clientId is not a GUID"):
        parse_platform_metadata(200, SERVER, _metadata(clientId=client_id), "c")
    with pytest.raises(ImdsResponseError, match="client_id is not a GUID"):
        parse_issued_credential(200, {}, _issued(client_id=client_id), "c")


@pytest.mark.parametrize("identity_type", [
    "System\nAssigned", "Système", "x" * 65, "System\x7fAssigned", "\u2028",
])
def test_identity_type_must_be_a_short_printable_ascii_name(identity_type):
    with pytest.raises(ImdsResponseError, match="identity_type"):
        parse_issued_credential(200, {}, _issued(identity_type=identity_type), "c")


def test_cuid_with_control_characters_is_refused():
    with pytest.raises(ImdsResponseError, match="cuId"):
        parse_platform_metadata(200, SERVER, _metadata(cuId={"vmId": "vm\r1"}), "c")


def test_issued_http_endpoint_is_refused_with_a_clear_error():
    with pytest.raises(ImdsResponseError,
                       match="mtls_authentication_endpoint is plain http: the token leg must use "
                             "https"):
        parse_issued_credential(
            200, {}, _issued(mtls_authentication_endpoint="http://mtls.example"), "c")
