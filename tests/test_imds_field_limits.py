"""An oversized field in IMDS's issuecredential answer is an IMDS error at issuance (an
``ImdsResponseError`` naming the field), never a store entry that later reads as corrupt; and
the emulator cannot be told to issue certificates whose NotAfter reaches the year 9999.

A real IMDS front on 127.0.0.1 (written here) forwards every request to the emulator and
enlarges one field of the issuecredential answer: ``mtls_authentication_endpoint`` grows a
long path, or the certificate grows an extension (re-signed: msicert does not check the
issuer's signature, ESTS does) while keeping our key, names and validity.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ObjectIdentifier

from msicert import ImdsResponseError
from msicert.emulator import Emulator
from msicert.emulator._state import MAX_LIFETIME
from tests.certgen import rsa_key
from tests.conftest import cli_env

_PAD_OID = ObjectIdentifier("1.3.6.1.4.1.311.99.1")  # a private, non-critical extension


def _bigger_certificate(der: bytes, size: int) -> bytes:
    """``der`` with an extension of ``size`` bytes: same key, names and validity."""
    cert = x509.load_der_x509_certificate(der)
    builder = (x509.CertificateBuilder().subject_name(cert.subject)
               .issuer_name(cert.issuer).public_key(cert.public_key())
               .serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(x509.UnrecognizedExtension(_PAD_OID, b"\x00" * size),
                                    critical=False)
    return builder.sign(rsa_key(9), hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class ImdsFront:
    """Forwards to the emulator's IMDS; ``enlarge(doc)`` edits each issuecredential answer."""

    def __init__(self, upstream: str, enlarge) -> None:
        http = urllib3.PoolManager(retries=False)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                resp = http.request(self.command, upstream + self.path, body=body or None,
                                    headers=headers, redirect=False)
                data = resp.data
                if "/issuecredential" in self.path and resp.status == 200:
                    data = json.dumps(enlarge(json.loads(data))).encode()
                self.send_response(resp.status)
                for name, value in resp.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding",
                                            "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Server", resp.headers.get("Server", ""))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _long_endpoint(doc: dict) -> dict:
    return {**doc, "mtls_authentication_endpoint":
            doc["mtls_authentication_endpoint"] + "/" + "a" * 3000}


def _big_certificate(size: int):
    def enlarge(doc: dict) -> dict:
        der = _bigger_certificate(base64.b64decode(doc["certificate"]), size)
        return {**doc, "certificate": base64.b64encode(der).decode("ascii")}
    return enlarge


@pytest.mark.parametrize(("enlarge", "field"), [
    (_long_endpoint, "mtls_authentication_endpoint"),
    (_big_certificate(30 * 1024), "certificate"),
    (_big_certificate(60 * 1024), "certificate"),  # an entry with it would exceed 64 KiB
], ids=["endpoint-3000", "certificate-30k", "certificate-60k"])
def test_an_oversized_issuecredential_field_is_an_imds_error_and_stores_nothing(
        make_client, emu, store_dir, enlarge, field):
    front = ImdsFront(emu.imds_url, enlarge)
    try:
        client = make_client(imds_endpoint=front.url)
        with pytest.raises(ImdsResponseError) as info:
            client.get_certificate()
    finally:
        front.close()
    message = str(info.value)
    assert f"IMDS issuecredential answer has a {field!r} of " in message
    assert "characters (at most" in message and info.value.step == "issuecredential"
    assert emu.count("issuecredential") == 1
    assert client.status() is None  # nothing in the store, so nothing reads as corrupt
    assert [n for n in os.listdir(store_dir) if n.endswith(".pem")] == []


def test_a_certificate_just_under_the_limit_is_stored_and_read_back(make_client, emu):
    front = ImdsFront(emu.imds_url, _big_certificate(16 * 1024))
    try:
        cert = make_client(imds_endpoint=front.url).get_certificate()
    finally:
        front.close()
    assert len(cert.der) > 16 * 1024
    assert make_client().status().x5t_s256 == cert.x5t_s256  # a second client reads it


# --- the emulator's lifetime ------------------------------------------------------------------

def test_the_emulator_command_refuses_a_lifetime_reaching_the_year_9999():
    proc = subprocess.run([sys.executable, "-m", "msicert", "emulator", "--lifetime", "1e12"],
                          capture_output=True, text=True, env=cli_env(), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["msicert emulator: lifetime 1e+12 s is longer than 3.1536e+09 s "
                     "(100 years): NotAfter must stay before the year 9999"], proc.stderr
    assert proc.stdout == ""


def test_the_emulator_object_refuses_a_lifetime_reaching_the_year_9999():
    emulator = Emulator()
    with pytest.raises(ValueError, match=r"lifetime must be in \(0, 3\.1536e\+09\] seconds"):
        emulator.lifetime = 1e12
    assert emulator.lifetime == 3600.0


def test_the_control_api_refuses_a_lifetime_reaching_the_year_9999(emu):
    http = urllib3.PoolManager()
    resp = http.request("POST", f"{emu.imds_url}/__emulator__/config",
                        body=json.dumps({"lifetime": 1e12}).encode())
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request" and "100 years" in resp.json()[
        "error_description"]
    assert emu.lifetime == 3600.0


def test_the_longest_lifetime_the_emulator_takes_issues_a_usable_certificate(make_client, emu):
    emu.lifetime = MAX_LIFETIME
    cert = make_client().get_certificate()
    assert cert.not_after.year < 9999
    assert cert.not_after_ts - cert.not_before_ts == pytest.approx(MAX_LIFETIME, abs=1)
