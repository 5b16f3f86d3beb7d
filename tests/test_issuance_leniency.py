"""No stricter than the references on what IMDS issues: a certificate whose base64 has line
breaks is accepted (.NET's Convert.FromBase64String, Go's StdEncoding), and so is an issuer
other than the public cloud's (MSAL.NET uses that name only to purge). The issuer actually
issued is recorded and later lookups match it; ``issuer=`` / ``$MSICERT_ISSUER`` stay strict."""

from __future__ import annotations

import base64
import time

import pytest

from msicert import ImdsResponseError
from msicert.backends.contract import CorruptEntry
from msicert.emulator import Fault
from msicert.emulator._ca import ISSUER_CN, SOVEREIGN_ISSUER_CN
from msicert.wire._imds_answers import parse_issued_credential
from tests.certgen import der as der_of
from tests.certgen import make_cert
from tests.conftest import cli_json

RESOURCE = "https://vault.azure.net"


@pytest.mark.parametrize("sep", ["\r\n", "\n", " ", "\t", "\r\n  "])
def test_base64_with_whitespace_between_lines_is_accepted(sep):
    der = der_of(make_cert(not_before=time.time() - 60, not_after=time.time() + 3600))
    text = base64.b64encode(der).decode()
    wrapped = sep.join(text[i : i + 64] for i in range(0, len(text), 64))
    body = (b'{"client_id":"5e2c1a7d-3b9f-4c21-8d6e-0f4a9b7c3e12","tenant_id":"t.example",'
            b'"certificate":"' + wrapped.encode().replace(b"\r", b"\\r").replace(b"\n", b"\\n")
            .replace(b"\t", b"\\t") + b'","identity_type":"SystemAssigned",'
            b'"mtls_authentication_endpoint":"https://x.example"}')
    assert parse_issued_credential(200, {}, body, "c").certificate_der == der


@pytest.mark.parametrize("bad", ["@@@@", "AA=A", "AAA", "A-_A"])
def test_base64_that_is_not_base64_is_still_refused(bad):
    body = ('{"client_id":"5e2c1a7d-3b9f-4c21-8d6e-0f4a9b7c3e12","tenant_id":"t.example",'
            f'"certificate":"{bad}","identity_type":"SystemAssigned",'
            '"mtls_authentication_endpoint":"https://x.example"}').encode()
    with pytest.raises(ImdsResponseError, match="not base64"):
        parse_issued_credential(200, {}, body, "c")


def test_a_wrapped_certificate_from_imds_is_minted_and_used(make_client, emu):
    emu.inject("issuecredential", Fault(kind="wrapped_certificate"))
    c = make_client()
    cert = c.get_certificate()
    assert cert.source == "imds"
    assert c.acquire_token(RESOURCE).x5t_s256 == cert.x5t_s256


def test_another_issuer_name_is_accepted_recorded_and_found_again(make_client, emu, store_dir):
    emu.issuer_cn = SOVEREIGN_ISSUER_CN
    c = make_client()
    cert = c.get_certificate()
    assert SOVEREIGN_ISSUER_CN in cert.issuer and ISSUER_CN not in cert.issuer
    assert c.acquire_token(RESOURCE).x5t_s256 == cert.x5t_s256
    again = make_client().get_certificate()
    assert again.source == "store" and again.x5t_s256 == cert.x5t_s256
    assert cli_json("cert", "--store-dir", store_dir)["source"] == "store"
    assert emu.count("issuecredential") == 1


def test_an_explicit_issuer_stays_strict_at_issuance(make_client, emu):
    emu.issuer_cn = SOVEREIGN_ISSUER_CN
    with pytest.raises(ImdsResponseError, match=r"issuer is .* expected "
                                                r"'managedidentitysnissuer\.login\.microsoft"):
        make_client(issuer=ISSUER_CN).get_certificate()


def test_an_explicit_issuer_stays_strict_at_lookup(make_client, emu, monkeypatch):
    emu.issuer_cn = SOVEREIGN_ISSUER_CN
    make_client().get_certificate()
    monkeypatch.setenv("MSICERT_ISSUER", ISSUER_CN)
    strict = make_client()
    with pytest.raises(CorruptEntry) as err:
        strict.status()
    assert err.value.keep  # kept: the expectation may be what is wrong


def test_an_explicit_sovereign_issuer_matches(make_client, emu):
    emu.issuer_cn = SOVEREIGN_ISSUER_CN
    c = make_client(issuer="microsoftonline.us")
    assert c.get_certificate().source == "imds"
    assert make_client(issuer="microsoftonline.us").get_certificate().source == "store"
