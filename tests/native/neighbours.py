"""MSAL.NET and MSAL Go as msicert's neighbours in CurrentUser\\My, ported from their source for
the Wine tier and real Windows: their writers (to seed the store exactly as they write it) and
their readers (to show which entries they would use). No msicert code decides anything here.

References: AzureAD/microsoft-authentication-library-for-dotnet @ 39d200113 (2026-07-24),
src/client/Microsoft.Identity.Client/ManagedIdentity/ (paths below are relative to it), and
MSAL Go's IMDSv2 branch, apps/managedidentity/imdsv2_persist_windows.go and imdsv2_persist.go.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
KSP = "Microsoft Software Key Storage Provider"
ISSUER_FRAGMENT = "managedidentitysnissuer.login.microsoft.com"  # WindowsCngKeyOperations.cs:37
CERT_NCRYPT_KEY_SPEC = 0xFFFFFFFF  # wincrypt.h
DOTNET_KEY_SPEC = 0  # .NET CopyWithPrivateKey -> GuessKeySpec: 0 for the software KSP
DAY = 24 * 3600.0  # CertificateCacheEntry.MinRemainingLifetime


# --- the emulator (IMDS v2 + control API), as a third party would call it ------------------


def control(method: str, name: str, document: Any = None) -> Any:
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(f"{IMDS}/__emulator__/{name}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stats() -> dict[str, int]:
    """The emulator's call counts by endpoint."""
    counts: dict[str, int] = control("GET", "stats")["counts"]
    return counts


def issue_count() -> int:
    return stats()["issuecredential"]


@contextlib.contextmanager
def emulator_config(**values: float | str) -> Iterator[None]:
    """Certificate lifetime/backdate/issuer for the body of the ``with``, then back as they
    were."""
    before = control("POST", "config", {})
    control("POST", "config", values)
    try:
        yield
    finally:
        control("POST", "config", {k: before[k] for k in values})


def imds(path: str, query: dict[str, str], body: bytes | None = None) -> dict[str, Any]:
    qs = urllib.parse.urlencode({"cred-api-version": "2.0", **query})
    req = urllib.request.Request(
        f"{IMDS}/metadata/identity/{path}?{qs}", data=body,
        headers={"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()),
                 **({"Content-Type": "application/json; charset=utf-8"} if body else {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def mint_with(key: Any, query: dict[str, str]) -> dict[str, Any]:
    """getplatformmetadata + issuecredential for a CSR signed through NCrypt by ``key`` (what
    ImdsV2ManagedIdentitySource.AcquireMtlsBindingAsync does); ``der`` added."""
    import msicert_native as native
    from msicert.wire._csr import build_csr, csr_to_wire

    meta = imds("getplatformmetadata", query)
    csr = build_csr(
        spki_der=native.export_public_spki(key),
        sign=lambda tbs: native.sign_pss_sha256(key, hashlib.sha256(tbs).digest(), 32),
        client_id=meta["clientId"], tenant_id=meta["tenantId"], cuid=meta["cuId"])
    issued = imds("issuecredential", query, json.dumps({"csr": csr_to_wire(csr)}).encode())
    issued["der"] = base64.b64decode(issued["certificate"])
    return issued


def endpoint_base(issued: dict[str, Any]) -> str:
    """ImdsV2ManagedIdentitySource.cs: mtls_authentication_endpoint.TrimEnd('/') + "/" +
    tenant_id.Trim('/')."""
    return f"{issued['mtls_authentication_endpoint'].rstrip('/')}/{issued['tenant_id'].strip('/')}"


# --- the writers ---------------------------------------------------------------------------


def msal_net_tag(alias: str, ep: str) -> str:
    """MsiCertificateFriendlyNameEncoder.TryEncode: ``MSAL|alias=<alias>|ep=<ep>``, trimmed."""
    return f"MSAL|alias={alias.strip()}|ep={ep.strip()}"


def seed(der: bytes, friendly_name: str, container: str, *,
         key_spec: int = DOTNET_KEY_SPEC) -> None:
    """Add ``der`` to CurrentUser\\My as the references do: FriendlyName, and CERT_KEY_PROV_INFO
    {container, software KSP, prov type 0, flags 0 (user key), key spec} (.NET:
    CopyWithPrivateKey -> key spec 0; MSAL Go setKeyProvInfo: CERT_NCRYPT_KEY_SPEC)."""
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        native.add_certificate(store, der, friendly_name=friendly_name, key_name=container,
                               provider_name=KSP, prov_type=0, key_flags=0,
                               key_spec=key_spec).close()


@dataclass
class StoreEntry:
    """One certificate of CurrentUser\\My as a reader sees it."""

    der: bytes
    friendly_name: str | None
    container: str | None
    provider: str | None
    key_spec: int | None


def entries() -> list[StoreEntry]:
    import msicert_native as native

    out = []
    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            for ref in refs:
                info = native.get_key_prov_info(ref)
                out.append(StoreEntry(ref.der, native.get_friendly_name(ref),
                                      info and info.container, info and info.provider,
                                      info and info.key_spec))
        finally:
            for ref in refs:
                ref.close()
    return out


def in_store(der: bytes) -> bool:
    return any(e.der == der for e in entries())


def drop(*ders: bytes) -> None:
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        refs = native.enum_certificates(store)
        try:
            for ref in refs:
                if ref.der in ders:
                    native.delete_certificate(store, ref)
        finally:
            for ref in refs:
                ref.close()


def ca_cert(subject_cn: str, dc: str, issuer_cn: str, *, not_before: float,
                 not_after: float) -> bytes:
    """A certificate from a throw-away CA (EC keys, fast), for entries no IMDS would issue now
    (already expired ones)."""
    import datetime as dt

    from certs import name
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(subject_cn, dc))
            .issuer_name(name(issuer_cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.timezone.utc))
            .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.timezone.utc))
            .sign(ca, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# --- the readers ---------------------------------------------------------------------------


def decode(friendly_name: str | None) -> tuple[str, str] | None:
    """MsiCertificateFriendlyNameEncoder.TryDecode (V2/MsiCertificateFriendlyNameEncoder.cs
    95-126): ordinal ``MSAL|`` prefix, ``|``-split without empty pieces, each split at the first
    ``=``, trimmed, last ``alias``/``ep`` wins, both non-blank."""
    if not friendly_name or not friendly_name.startswith("MSAL|"):
        return None
    alias = ep = None
    for part in (p for p in friendly_name[5:].split("|") if p):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        if key.strip() == "alias":
            alias = value.strip()
        elif key.strip() == "ep":
            ep = value.strip()
    if not alias or not alias.strip() or not ep or not ep.strip():
        return None
    return alias, ep


def not_after(der: bytes) -> float:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def subject_cn(der: bytes) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return str(x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value)


def spki(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def guid(text: str) -> str | None:
    """.NET Guid.TryParse of the 8-4-4-4-12 form, as "D"."""
    try:
        return str(uuid.UUID(text)) if len(text) == 36 else None
    except ValueError:
        return None


def msal_go_reads(entry: StoreEntry, alias: str, now: float) -> dict[str, bool]:
    """MSAL Go's IMDSv2 read (imdsv2_persist_windows.go ``read``), rule by rule."""
    decoded = decode(entry.friendly_name)
    ep = decoded[1] if decoded else ""
    slash = ep.rfind("/")
    return {
        "decodeFriendlyName": decoded is not None,
        "name == alias": decoded is not None and decoded[0] == alias,
        # usesBindingKeyContainer: keySpec CERT_NCRYPT_KEY_SPEC, container bindingKeyName
        # ("KeyGuardRSAKey"), provider msKeyStorageProvider.
        "usesBindingKeyContainer": (entry.key_spec == CERT_NCRYPT_KEY_SPEC
                                    and entry.container == "KeyGuardRSAKey"
                                    and entry.provider == KSP),
        "NotAfter after now + bindingCertRefreshWindow": not_after(entry.der) > now + DAY,
        "clientIDFromSubject": guid(subject_cn(entry.der).strip()) is not None,
        "splitEndpointBase": 0 < slash < len(ep) - 1,
    }


# --- a second process holding a named mutex -------------------------------------------------


def reference_mutex_name(alias: str) -> str:
    """InterprocessLock.GetMutexNameForAlias for an ASCII alias, written out here:
    ``Global\\MSAL_MI_P_`` + SHA-256(UTF-8(alias.Trim().ToUpperInvariant())) hex[:32]."""
    return "Global\\MSAL_MI_P_" + hashlib.sha256(
        alias.strip().upper().encode("utf-8")).hexdigest()[:32]


_HOLDER = textwrap.dedent(
    """
    import ctypes, sys
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.CreateMutexW.restype = ctypes.c_void_p
    k32.CreateMutexW.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_wchar_p)
    k32.WaitForSingleObject.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    k32.ReleaseMutex.argtypes = (ctypes.c_void_p,)
    handle = k32.CreateMutexW(None, 0, sys.argv[1])
    assert handle, ctypes.get_last_error()
    assert k32.WaitForSingleObject(handle, 10000) in (0, 0x80)
    print("held", flush=True)
    sys.stdin.readline()
    k32.ReleaseMutex(handle)
    """
)


@contextlib.contextmanager
def held_by_another_process(name: str) -> Iterator[None]:
    """Another process (plain ctypes, as any library would) holds the mutex ``name``."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(60)


def expired_window(age: float = 7 * DAY) -> dict[str, float]:
    now = time.time()
    return {"not_before": now - age - 3600, "not_after": now - age}
