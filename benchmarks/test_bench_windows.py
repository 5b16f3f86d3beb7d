"""CurrentUser\\My lookup by subject + issuer, with the cffi and the ctypes backend side by side.

Windows only (windows-latest in GitHub CI, or the Wine tier); skipped elsewhere. The store is
seeded with one binding certificate (subject ``CN=<client id>, DC=<tenant>``, issuer CN
``managedidentitysnissuer.login.microsoft.com``) plus 1 or 200 unrelated certificates, through
``msicert_native._certstore``; every certificate added is removed again afterwards.

The measured lookup is what a new client does: open ``CurrentUser\\My``, walk
CertFindCertificateInStore(CERT_FIND_SUBJECT_STR_W, <client id>), keep the matches whose issuer
CN is the expected one (parsed with cryptography), close the store. Both backends run exactly
this code through their own ``msicert_native._<backend>_impl`` module. No targets yet: the
results are reported as INFO, with each backend's 200-versus-1 ratio and ctypes-versus-cffi.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _benchutil import describe
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from msicert_native._win32 import Win32

pytestmark = [
    pytest.mark.windows,
    pytest.mark.skipif(
        sys.platform != "win32",
        reason="needs Windows (runs on windows-latest in GitHub CI / Wine tier)",
    ),
]

ISSUER_CN = "managedidentitysnissuer.login.microsoft.com"
TENANT = "8d2e6f4a-1b3c-4d5e-9f70-a1b2c3d4e5f6"
MARKER = "msicert-bench"  # friendly name of everything this file adds
UNRELATED = [1, 200]
BACKENDS = ["cffi", "ctypes"]


def _certificate(key: rsa.RSAPrivateKey, subject: x509.Name, issuer: x509.Name) -> bytes:
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _binding_name(client_id: str) -> x509.Name:
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, TENANT)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, client_id)]),
    ])


def _cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _remove_ours() -> None:
    """Delete every certificate this file added (collect first, delete after: Wine)."""
    from msicert_native import _certstore

    with _certstore.open_system_store("current-user", "My") as store:
        refs = _certstore.enum_certificates(store)
        try:
            ours = [r for r in refs if _certstore.get_friendly_name(r) == MARKER]
            for ref in ours:
                _certstore.delete_certificate(store, ref)
        finally:
            for ref in refs:
                ref.close()


@pytest.fixture(scope="module")
def seeded_store(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """CurrentUser\\My with our binding certificate plus ``n`` unrelated ones: (client id, n).

    ``n`` comes from indirect parametrization, so each store is seeded once per module.
    """
    from msicert_native import _certstore

    n = int(request.param)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client_id = str(uuid.uuid4())
    ders = [_certificate(key, _binding_name(client_id), _cn(ISSUER_CN))]
    ders += [_certificate(key, _cn(f"{MARKER}-unrelated-{i}-{uuid.uuid4()}"),
                          _cn(f"{MARKER} unrelated issuer")) for i in range(n)]
    _remove_ours()
    try:
        with _certstore.open_system_store("current-user", "My") as store:
            for der in ders:
                _certstore.add_certificate(store, der, friendly_name=MARKER, key_name=None).close()
        yield client_id, n
    finally:
        _remove_ours()


def _backend(name: str) -> Win32:
    try:
        return Win32(importlib.import_module(f"msicert_native._{name}_impl"))
    except ImportError as exc:  # cffi missing or _ffi.py not generated
        pytest.skip(f"{name} backend unavailable: {exc}")


def lookup(impl: Win32, client_id: str, issuer_cn: str = ISSUER_CN) -> list[bytes]:
    """Open CurrentUser\\My, find by subject (client id) and issuer CN, close; the DERs."""
    from msicert_native import _constants as C

    found: list[bytes] = []
    store = impl.cert_open_store_system(
        C.CERT_SYSTEM_STORE_CURRENT_USER | C.CERT_STORE_MAXIMUM_ALLOWED_FLAG, "My"
    )
    try:
        ctx = 0
        while True:  # each call frees the previous context; 0 at the end
            ctx = impl.cert_find_certificate_in_store(store, C.CERT_FIND_SUBJECT_STR_W,
                                                      client_id, ctx)
            if not ctx:
                return found
            der = impl.cert_context_encoded(ctx)
            issuer = x509.load_der_x509_certificate(der).issuer
            cns = issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
            if len(cns) == 1 and str(cns[0].value).lower() == issuer_cn.lower():
                found.append(der)
    finally:
        impl.cert_close_store(store)


@pytest.mark.benchmark(group="windows store lookup", max_time=1.0)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seeded_store", UNRELATED, indirect=True,
                         ids=lambda n: f"{n}-unrelated")
def test_windows_store_lookup(
    benchmark: Any, request: pytest.FixtureRequest, seeded_store: tuple[str, int], backend: str
) -> None:
    """Lookup by subject + issuer in CurrentUser\\My through one backend."""
    impl = _backend(backend)
    client_id, n = seeded_store
    assert len(lookup(impl, client_id)) == 1
    name = request.node.name  # e.g. test_windows_store_lookup[200-unrelated-ctypes]
    siblings = []
    if backend == "ctypes":
        siblings.append(name.replace("-ctypes]", "-cffi]"))
    if n != UNRELATED[0]:
        siblings.append(name.replace(f"[{n}-unrelated", f"[{UNRELATED[0]}-unrelated"))
    describe(benchmark, f"CurrentUser\\My lookup, {backend}, {n} unrelated",
             info_compare_to=siblings, backend=backend, unrelated=n)
    assert len(benchmark(lookup, impl, client_id)) == 1
