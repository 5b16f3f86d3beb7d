"""Cold mint against the emulator versus the primitives it cannot avoid.

The floor is built here from primitives, not from msicert: RSA-2048 key generation, a PKCS#10
CSR signed with RSASSA-PSS (cryptography's builder), one POST of it to the emulator's
issuecredential over a new loopback connection, and one atomic write (O_EXCL temp file,
fsync, rename, directory fsync) of key + certificate. RSA key generation time varies a lot
from key to key (prime search), so both sides run many pedantic rounds and medians are compared.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _benchutil import describe, describe_floor
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from msicert.wire._csr import build_csr

ROUNDS = 120
WARMUP = 3
MINT = pytest.mark.benchmark(group="cold mint")
_counter = itertools.count()


def _fresh_dir(base: Path) -> str:
    """A not-yet-existing store directory under ``base`` (a cold machine)."""
    return str(base / f"round-{next(_counter)}" / "certs")


def _atomic_write(directory: str, name: str, data: bytes) -> None:
    """O_EXCL 0600 temp file, write, fsync, rename over ``name``, fsync the directory."""
    path = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def make_floor(emulator: Any, base: Path) -> tuple[Callable[[], tuple[tuple[str], dict[str, Any]]],
                                                 Callable[[str], None]]:
    """``(setup, floor)``: a fresh directory per round, and the floor's work in it."""
    url = urlsplit(emulator.imds_url)
    client_id = emulator.client_id_for({})
    cuid = {k: emulator.cuid[k] for k in ("vmId", "vmssId") if emulator.cuid.get(k)}
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    path = "/metadata/identity/issuecredential?cred-api-version=2.0"

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        directory = _fresh_dir(base)
        os.makedirs(directory, mode=0o700)
        return (directory,), {}

    def floor(directory: str) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # cryptography's CSR builder writes NULL hash parameters, which IMDS (and the emulator)
        # refuse: the floor signs the reference form through the same tiny DER encoder (its
        # cost is microseconds against the keygen's tens of milliseconds).
        csr = build_csr(
            spki_der=key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            sign=lambda tbs: key.sign(tbs, pss, hashes.SHA256()),
            client_id=client_id, tenant_id=emulator.tenant_id, cuid=cuid,
        )
        body = json.dumps({"csr": base64.b64encode(csr).decode()}).encode("ascii")
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers={
                "Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
                "Accept": "application/json", "Content-Type": "application/json; charset=utf-8",
            })
            resp = conn.getresponse()
            answer = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise AssertionError(f"issuecredential answered {resp.status}: {answer[:300]!r}")
        cert_b64 = json.loads(answer)["certificate"].encode("ascii")
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _atomic_write(directory, "msal_mtls.pem", key_pem + cert_b64)

    return setup, floor


@MINT
def test_floor_cold_mint(benchmark: Any, emulator: Any, tmp_path: Path) -> None:
    """Floor: keygen + CSR sign + one loopback POST + one atomic write."""
    setup, floor = make_floor(emulator, tmp_path)
    before = emulator.count("issuecredential")
    floor(*setup()[0])
    assert emulator.count("issuecredential") == before + 1
    assert emulator.violations == [], emulator.violations
    describe_floor(benchmark, "RSA-2048 keygen + CSR sign + 1 POST + 1 atomic write")
    benchmark.pedantic(floor, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP)


@MINT
def test_cold_mint(
    benchmark: Any, emulator: Any, make_client: Callable[[str], Any], tmp_path: Path
) -> None:
    """``get_certificate()`` of a new client with an empty (not yet created) store.

    Before each round (untimed) one floor run is timed by hand: an interleaved diagnostic.
    """
    floor_setup, floor = make_floor(emulator, tmp_path)
    interleaved: list[float] = []

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        args = floor_setup()[0]
        start = time.perf_counter()
        floor(*args)
        interleaved.append(time.perf_counter() - start)
        return (make_client(_fresh_dir(tmp_path)),), {}

    def mint(client: Any) -> Any:
        return client.get_certificate()

    before = emulator.count("issuecredential"), emulator.count("getplatformmetadata")
    assert mint(make_client(_fresh_dir(tmp_path))).source == "imds"
    result = benchmark.pedantic(mint, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert result.source == "imds"
    n = 1 + ROUNDS + WARMUP
    after = emulator.count("issuecredential"), emulator.count("getplatformmetadata")
    assert after == (before[0] + n + ROUNDS + WARMUP, before[1] + n), "one mint per round"
    assert emulator.violations == [], emulator.violations
    describe(benchmark, "cold mint (emulator)", floor="test_floor_cold_mint", max_ratio=1.3,
             interleaved=[{"label": "interleaved floor (diagnostic)",
                           "samples_s": interleaved[WARMUP:]}])
