"""Store first, then one mint: lookup, minting, persisting and corrupt entries, end to end
against the emulator (real HTTP on loopback)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from msicert import ImdsResponseError, ManagedIdentityClient
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from tests.conftest import cli_json
from tests.test_store_file import CORRUPTIONS, _write_entry

ARM = ("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
       "userAssignedIdentities/app")
UAMI_CLIENT = "33333333-2222-3333-4444-555555555555"


def imds_calls(emu) -> tuple[int, int]:
    return emu.count("getplatformmetadata"), emu.count("issuecredential")


def test_cold_mint_then_memory_then_store_in_a_new_client(make_client, emu):
    c = make_client()
    first = c.get_certificate()
    assert first.source == "imds"
    assert imds_calls(emu) == (1, 1)
    again = c.get_certificate()
    assert again.source == "memory" and again.x5t_s256 == first.x5t_s256
    fresh_client = make_client()
    stored = fresh_client.get_certificate()
    assert stored.source == "store" and stored.x5t_s256 == first.x5t_s256
    assert imds_calls(emu) == (1, 1)
    assert emu.violations == []


def test_new_process_with_stored_certificate_makes_zero_imds_calls(emu, store_dir):
    cold = cli_json("cert", "--store-dir", store_dir)
    assert cold["source"] == "imds"
    assert imds_calls(emu) == (1, 1)
    warm = cli_json("cert", "--store-dir", store_dir)
    assert warm["source"] == "store"
    assert warm["x5t_s256"] == cold["x5t_s256"]
    assert imds_calls(emu) == (1, 1)  # not even getplatformmetadata
    for field in ("mtls_endpoint", "client_id", "tenant_id"):
        assert warm[field] == cold[field] and warm[field]
    assert warm["mtls_endpoint"] == emu.ests_url
    assert warm["key"] == "file"
    assert warm["store"] == os.path.join(store_dir, "msal_mtls.pem")


def test_cert_json_fields(emu, store_dir):
    out = cli_json("cert", "--store-dir", store_dir)
    for key in ("x5t_s256", "subject", "issuer", "not_before", "not_after", "renew_after",
                "source", "client_id", "tenant_id", "mtls_endpoint", "key", "store"):
        assert out[key], key
    assert out["issuer"] == "CN=managedidentitysnissuer.login.microsoft.com"
    assert out["not_after"].endswith("Z")
    assert "=" not in out["x5t_s256"] and len(out["x5t_s256"]) == 43


@pytest.mark.parametrize(
    "selector,query",
    [
        ({}, {}),
        ({"client_id": UAMI_CLIENT}, {"client_id": UAMI_CLIENT}),
        ({"object_id": UAMI_CLIENT}, {"object_id": UAMI_CLIENT}),
        ({"resource_id": ARM}, {"mi_res_id": ARM}),
    ],
)
def test_each_identity_sends_its_selector_and_gets_its_own_entry(make_client, emu, selector, query):
    cert = make_client(**selector).get_certificate()
    sent = [r.query for r in emu.requests if r.endpoint in ("getplatformmetadata",
                                                              "issuecredential")]
    assert sent == [{"cred-api-version": "2.0", **query}] * 2
    assert cert.client_id == emu.client_id_for(query)
    assert emu.violations == []


def test_identities_never_share_an_entry(make_client, emu, store_dir):
    certs = {
        name: make_client(**sel).get_certificate()
        for name, sel in {"sys": {}, "cid": {"client_id": UAMI_CLIENT},
                          "oid": {"object_id": UAMI_CLIENT}, "res": {"resource_id": ARM}}.items()
    }
    assert len({c.x5t_s256 for c in certs.values()}) == 4
    assert len({c.store for c in certs.values()}) == 4
    assert emu.count("issuecredential") == 4
    for name, sel in {"cid": {"client_id": UAMI_CLIENT}, "res": {"resource_id": ARM}}.items():
        again = make_client(**sel).get_certificate()
        assert again.source == "store" and again.x5t_s256 == certs[name].x5t_s256
    assert emu.count("issuecredential") == 4


def test_expected_issuer_is_configurable_by_parameter_and_environment(make_client, emu,
                                                                      monkeypatch, store_dir):
    with pytest.raises(ImdsResponseError, match="issuer"):
        make_client(issuer="other-issuer.example").get_certificate()
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.pem"))
    monkeypatch.setenv("MSICERT_ISSUER", "OTHER-issuer.example")
    with pytest.raises(ImdsResponseError, match="issuer"):
        make_client().get_certificate()
    monkeypatch.setenv("MSICERT_ISSUER", "ManagedIdentitySNIssuer.login.microsoft.com")
    assert make_client().get_certificate().source == "imds"


def test_csr_meets_the_contract_for_the_emulator_and_openssl(make_client, emu, tmp_path):
    make_client().get_certificate()
    assert emu.violations == []
    (req,) = [r for r in emu.requests if r.endpoint == "issuecredential"]
    assert req.headers.get("Content-Type") == "application/json; charset=utf-8"
    body = json.loads(req.body)
    assert set(body) == {"csr"}  # no attestation on Linux: the field is omitted
    assert "\n" not in body["csr"] and body["csr"].endswith(("=", ""))
    der = base64.b64decode(body["csr"], validate=True)
    path = tmp_path / "req.der"
    path.write_bytes(der)
    out = subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(path), "-verify",
                          "-noout", "-text"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "verify OK" in (out.stdout + out.stderr)
    assert "rsassaPss" in out.stdout and "Salt Length: 0x20" in out.stdout
    csr = x509.load_der_x509_csr(der)
    assert [rdn.rfc4514_string().split("=")[0] for rdn in csr.subject.rdns] == ["DC", "CN"]
    assert csr.public_key().key_size == 2048


def test_issued_certificate_over_another_key_is_rejected_and_not_stored(make_client, emu,
                                                                        store_dir):
    emu.inject("issuecredential", Fault(kind="wrong_key"))
    with pytest.raises(ImdsResponseError, match="public key"):
        make_client().get_certificate()
    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.pem"))


def test_failed_mint_never_deletes_the_last_valid_certificate(make_client, emu, store_dir):
    good = make_client().get_certificate()
    emu.inject("issuecredential", Fault(kind="wrong_key"))
    c = make_client(clock=lambda: good.renew_after_ts + 1)
    served = c.get_certificate()
    assert served.x5t_s256 == good.x5t_s256
    assert emu.count("issuecredential") == 2
    assert FileStore(store_dir).find(c.identity, issuer_cn=c.issuer_cn).x5t_s256 == good.x5t_s256


@pytest.mark.parametrize("reason", sorted(CORRUPTIONS))
def test_corrupt_entry_is_removed_and_reminted_exactly_once(make_client, emu, store_dir, reason):
    from msicert.backends.posix import _store_read

    store = FileStore(store_dir)
    make_client().get_certificate()
    data = Path(store.path_for(make_client().identity)).read_bytes()
    _write_entry(store, CORRUPTIONS[reason](data))
    _store_read._verified.clear()
    emu.reset()
    cert = make_client().get_certificate()
    assert cert.source == "imds"
    assert emu.count("issuecredential") == 1
    assert make_client().get_certificate().source == "store"
    assert emu.count("issuecredential") == 1


@pytest.mark.parametrize("kind", ["wrong_subject", "wrong_issuer"])
def test_entry_of_wrong_subject_or_issuer_is_replaced(make_client, emu, store_dir, kind):
    import time

    from tests.certgen import der, key_pem, make_cert, rsa_key
    from tests.store_contract import Entry, PemKey, pem_of

    now = time.time()
    cert = make_cert(key=rsa_key(3), not_before=now - 10, not_after=now + 3600,
                     **({"issuer_cn": "evil.example"} if kind == "wrong_issuer"
                        else {"cn": "44444444-2222-3333-4444-555555555555"}))
    client = make_client(client_id=UAMI_CLIENT)
    store = FileStore(store_dir)
    # Write the bad entry directly: the store refuses to put it.
    e = Entry(der=der(cert), key=PemKey(key_pem(rsa_key(3))))
    header = (f"msicert-entry: 1\nidentity: {client.identity.alias}\nclient_id: {e.client_id}\n"
              f"tenant_id: {e.tenant_id}\nmtls_endpoint: {e.mtls_endpoint}\n"
              f"identity_type: UserAssigned\n").encode()
    from cryptography.hazmat.primitives.serialization import Encoding
    store.ensure_directory()
    with open(store.path_for(client.identity), "wb") as f:
        f.write(header + pem_of(e) + cert.public_bytes(Encoding.PEM))
    got = client.get_certificate()
    assert got.source == "imds" and emu.count("issuecredential") == 1
    assert got.certificate.issuer.rfc4514_string() == \
        "CN=managedidentitysnissuer.login.microsoft.com"


def test_malformed_or_incomplete_imds_answers_are_clear_errors(make_client, emu):
    emu.inject("getplatformmetadata", Fault(kind="no_server_header"))
    with pytest.raises(ImdsResponseError, match="Server header"):
        make_client().get_certificate()
    emu.inject("getplatformmetadata", Fault(kind="malformed_json"))
    with pytest.raises(ImdsResponseError, match="not JSON"):
        make_client().get_certificate()
    emu.inject("getplatformmetadata", Fault(kind="missing_field:cuId"))
    with pytest.raises(ImdsResponseError, match="cuId"):
        make_client().get_certificate()
    emu.inject("issuecredential", Fault(kind="missing_field:mtls_authentication_endpoint"))
    with pytest.raises(ImdsResponseError, match="mtls_authentication_endpoint"):
        make_client().get_certificate()
    emu.inject("issuecredential", Fault(kind="expired"))
    with pytest.raises(ImdsResponseError, match="expired"):
        make_client().get_certificate()


def test_client_defaults_to_environment_imds_endpoint(emu, store_dir):
    c = ManagedIdentityClient(store_dir=store_dir)
    assert c.get_certificate().source == "imds"
    assert emu.count("issuecredential") == 1
