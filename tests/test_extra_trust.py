"""``$MSICERT_CA_BUNDLE``: trusted in addition to OpenSSL's default paths, parsed once."""

from __future__ import annotations

import ssl

import pytest

from msicert import MsiCertError
from msicert.backends.posix._ssl_transport import build_context

RESOURCE = "https://management.azure.com"


@pytest.fixture
def stored(make_client):
    cert = make_client().get_certificate()
    assert cert.source == "imds"
    return cert


@pytest.fixture
def bundle_loads(monkeypatch):
    """The cafile of every ``load_verify_locations`` call (the default paths are not one)."""
    calls: list[str | None] = []
    real = ssl.SSLContext.load_verify_locations

    def spy(self, cafile=None, capath=None, cadata=None):
        calls.append(cafile)
        return real(self, cafile, capath, cadata)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", spy)
    return calls


def _ca_subjects(ctx: ssl.SSLContext) -> list[tuple]:
    return [ca["subject"] for ca in ctx.get_ca_certs()]


def test_a_bundle_that_ssl_cert_file_already_loaded_is_not_parsed_again(
    stored, emu, monkeypatch, bundle_loads
):
    monkeypatch.setenv("SSL_CERT_FILE", emu.ca_file)
    monkeypatch.setenv("MSICERT_CA_BUNDLE", emu.ca_file)
    ctx = build_context(stored)
    assert bundle_loads == []
    assert len(_ca_subjects(ctx)) == 1  # the emulator's CA, from the default paths


def test_a_bundle_beside_the_system_trust_is_loaded_once(
    stored, emu, monkeypatch, bundle_loads, tmp_path
):
    empty = tmp_path / "system.pem"  # a system trust without the emulator's CA
    empty.write_bytes(b"")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("MSICERT_CA_BUNDLE", emu.ca_file)
    ctx = build_context(stored)
    assert bundle_loads == [emu.ca_file]
    assert len(_ca_subjects(ctx)) == 1


def test_the_bundle_makes_the_token_request_trust_the_emulator(make_client, emu, monkeypatch,
                                                               tmp_path):
    empty = tmp_path / "system.pem"
    empty.write_bytes(b"")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("MSICERT_CA_BUNDLE", emu.ca_file)
    token = make_client().acquire_token(RESOURCE)
    assert token.x5t_s256 and emu.count("token") == 1


def test_a_shared_path_that_loads_nothing_still_says_which_variable_is_wrong(
    stored, monkeypatch, tmp_path
):
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(broken))
    monkeypatch.setenv("MSICERT_CA_BUNDLE", str(broken))
    with pytest.raises(MsiCertError, match=r"MSICERT_CA_BUNDLE=.*cannot be loaded"):
        build_context(stored)
