"""CNG keys in the software KSP (Wine tier and real Windows).

Under Wine one key per padding: after a PSS signature, PKCS#1 signatures on the same key fail
(0x8009002D, a Wine bug). Wine cannot show key persistence across processes (NCryptOpenKey and
NCryptDeleteKey are stubs), export-policy enforcement, or KeyGuard: those tests skip there.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from native_testutil import artifact_dir, is_wine, needs_windows, skip_on_wine

pytestmark = needs_windows


def _native() -> Any:
    import msicert_native

    return msicert_native


@pytest.fixture
def provider() -> Iterator[Any]:
    with _native().open_provider() as prov:
        yield prov


@pytest.fixture
def key(provider: Any) -> Iterator[Any]:
    native = _native()
    created = native.create_rsa_key(provider, f"msicert-test-{uuid.uuid4()}", keyguard=False)
    try:
        yield created
    finally:
        if not created.closed and not is_wine():
            native.delete_key(created)
        created.close()


def _public(key: Any) -> Any:
    return serialization.load_der_public_key(_native().export_public_spki(key))


def test_software_key_exports_spki_and_signs_pss(key: Any) -> None:
    native = _native()
    public = _public(key)
    assert public.key_size == 2048
    message = b"msicert pss"
    signature = native.sign_pss_sha256(key, hashlib.sha256(message).digest())
    assert len(signature) == 256
    public.verify(
        signature,
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert native.is_virtual_iso(key) is False
    assert native.get_export_policy(key) == 0


def test_software_key_signs_pkcs1(key: Any) -> None:
    native = _native()
    message = b"msicert pkcs1"
    signature = native.sign_pkcs1_sha256(key, hashlib.sha256(message).digest())
    _public(key).verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def test_sign_rejects_a_non_sha256_digest(key: Any) -> None:
    with pytest.raises(ValueError):
        _native().sign_pss_sha256(key, b"short")


def test_csr_signed_by_the_cng_key(key: Any) -> None:
    """The IMDS v2 CSR built over the CNG key verifies (here, and with openssl in run.sh)."""
    from msicert.wire._csr import build_csr

    native = _native()
    client_id, tenant_id = str(uuid.uuid4()), str(uuid.uuid4())
    csr_der = build_csr(
        spki_der=native.export_public_spki(key),
        sign=lambda tbs: native.sign_pss_sha256(key, hashlib.sha256(tbs).digest()),
        client_id=client_id,
        tenant_id=tenant_id,
        cuid={"vmId": str(uuid.uuid4())},
    )
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid
    assert client_id in csr.subject.rfc4514_string()
    out = artifact_dir()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        backend = native.BACKEND
        (out / f"csr-{backend}.der").write_bytes(csr_der)


def test_ncrypt_failure_carries_status(provider: Any) -> None:
    native = _native()
    with pytest.raises(native.NativeError) as info:
        native.open_key(provider, f"msicert-missing-{uuid.uuid4()}")
    err = info.value
    assert err.function == "NCryptOpenKey"
    assert err.status is not None and err.status >= 0x80000000
    assert f"0x{err.status:08X}" in str(err)


@skip_on_wine("NCryptOpenKey/NCryptDeleteKey are stubs: keys do not survive the process")
def test_key_persists_across_processes_until_deleted(provider: Any) -> None:
    native = _native()
    name = f"msicert-test-{uuid.uuid4()}"
    created = native.create_rsa_key(provider, name, keyguard=False)
    spki = native.export_public_spki(created)
    created.close()
    child = textwrap.dedent(
        """
        import sys, msicert_native as n
        with n.open_provider() as p, n.open_key(p, sys.argv[1]) as k:
            sys.stdout.write(n.export_public_spki(k).hex())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, name], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert bytes.fromhex(result.stdout) == spki
    with native.open_key(provider, name) as reopened:
        native.delete_key(reopened)
        assert reopened.closed
    with pytest.raises(native.NativeError):
        native.open_key(provider, name)


@skip_on_wine("export policy is not enforced (private blobs export regardless)")
def test_private_key_is_not_exportable(key: Any) -> None:
    from msicert_native._backend import impl

    native = _native()
    with pytest.raises(native.NativeError) as info:
        impl.ncrypt_export_key(key.handle, "RSAPRIVATEBLOB", 0)
    assert info.value.status is not None


@skip_on_wine("KeyGuard (VBS) flags are accepted and ignored")
def test_keyguard_key_or_documented_fallback(provider: Any) -> None:
    """KeyGuard where VBS runs; otherwise the documented failure, then a software key."""
    native = _native()
    name = f"msicert-test-kg-{uuid.uuid4()}"
    try:
        key = native.create_rsa_key(provider, name, keyguard=True)
    except native.NativeError as exc:
        assert exc.status is not None  # e.g. 0x80890014 "VBS key isolation is not available"
        with native.create_rsa_key(provider, name, keyguard=False) as fallback:
            assert native.is_virtual_iso(fallback) is False
            assert native.get_export_policy(fallback) == 0
            native.sign_pss_sha256(fallback, hashlib.sha256(b"x").digest())
            native.delete_key(fallback)
        return
    with key:
        assert native.is_virtual_iso(key) is True
        native.sign_pss_sha256(key, hashlib.sha256(b"x").digest())
        native.delete_key(key)


# --- a binding key that fails its export-policy check ----------------------------------------


def _held(*_a: Any) -> Any:
    import contextlib

    return contextlib.nullcontext(True)


def _provision_with_exportable_policy_faked(
        monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """msicert's binding-key provisioning with the export-policy answer faked to
    NCRYPT_ALLOW_EXPORT_FLAG (no KSP makes a key that msicert asked to be non-exportable
    exportable on its own). Returns the keys checked and those NCryptDeleteKey was asked to
    delete."""
    import msicert_native
    from msicert.backends.windows import _ncrypt_key

    checked: list[Any] = []
    deleted: list[Any] = []
    real_delete = msicert_native.delete_key

    def exportable(key: Any) -> int:
        checked.append(key)
        return 0x1

    def delete_spy(key: Any) -> None:
        deleted.append(key)
        real_delete(key)

    from msicert import StoreError

    monkeypatch.setattr(msicert_native, "get_export_policy", exportable)
    monkeypatch.setattr(msicert_native, "delete_key", delete_spy)
    with pytest.raises((msicert_native.NativeError, StoreError),
                       match="export policy is 0x1, not 0"):
        _ncrypt_key.binding_key("system", machine=False, hold=_held, purge=lambda name: 0)
    return checked, deleted


@skip_on_wine("NCryptOpenKey is a stub, so every provisioning creates: the case of a key that "
              "already exists cannot arise; the created case is "
              "test_created_binding_key_failing_its_export_policy_check_is_deleted_faked_policy")
def test_existing_binding_key_failing_its_export_policy_check_is_refused_not_deleted_faked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native
    from msicert.backends.windows import _ncrypt_key

    _ncrypt_key.binding_key("system", machine=False, hold=_held, purge=lambda name: 0)
    _ncrypt_key.forget_binding_keys()  # a new process finds the key
    checked, deleted = _provision_with_exportable_policy_faked(monkeypatch)
    assert checked and deleted == []  # another library's key: never deleted
    assert all(key.closed for key in checked)
    with msicert_native.open_provider() as provider:  # still there for its owners
        msicert_native.open_key(provider, checked[-1].name).close()


def test_created_binding_key_failing_its_export_policy_check_is_deleted_faked_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import msicert_native

    real_open, real_create = msicert_native.open_key, msicert_native.create_rsa_key

    def absent(*args: Any, **kw: Any) -> Any:  # no key yet: provisioning must create
        raise msicert_native.NativeError("NCryptOpenKey", status=0x80090016)

    def create_over(*args: Any, **kw: Any) -> Any:  # the real key may exist (real Windows)
        return real_create(*args, **{**kw, "overwrite": True})

    if not is_wine():  # Wine's NCryptOpenKey never finds a key anyway
        monkeypatch.setattr(msicert_native, "open_key", absent)
        monkeypatch.setattr(msicert_native, "create_rsa_key", create_over)
    checked, deleted = _provision_with_exportable_policy_faked(monkeypatch)
    monkeypatch.setattr(msicert_native, "open_key", real_open)
    rejected = checked[-1]
    assert rejected.name in ("KeyGuardRSAKey", "HardwareRSAKey")
    assert deleted[-1] is rejected  # created by msicert just now: deleted, not left behind
    assert rejected.closed  # NCryptDeleteKey freed it or, where it failed, it was closed


# --- what the shared binding key needs: usage, no-overwrite creation, listing, age -----------


def test_signing_only_key_signs_pss_and_exports_its_public_half(provider: Any) -> None:
    """MSAL.NET's HardwareRSAKey is created with KeyUsage = Signing (CreateUserPcpRsa)."""
    native = _native()
    name = f"msicert-test-sign-{uuid.uuid4()}"
    with native.create_rsa_key(provider, name, keyguard=False,
                               usage=native.constants.NCRYPT_ALLOW_SIGNING_FLAG) as created:
        digest = hashlib.sha256(b"signing only").digest()
        signature = native.sign_pss_sha256(created, digest)
        _public(created).verify(signature, b"signing only", padding.PSS(
            padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        if not is_wine():  # Wine keeps no key properties
            from msicert_native._backend import impl

            _, usage = impl.ncrypt_get_property(
                created.handle, native.constants.NCRYPT_KEY_USAGE_PROPERTY, 4, 0)
            assert int.from_bytes(usage, "little") == native.constants.NCRYPT_ALLOW_SIGNING_FLAG
            native.delete_key(created)


@skip_on_wine("keys are not persisted, so a second key of one name is never refused")
def test_creating_without_overwrite_refuses_an_existing_key(provider: Any) -> None:
    native = _native()
    name = f"msicert-test-exists-{uuid.uuid4()}"
    first = native.create_rsa_key(provider, name, keyguard=False, overwrite=False)
    try:
        spki = native.export_public_spki(first)
        with pytest.raises(native.NativeError) as info:
            native.create_rsa_key(provider, name, keyguard=False, overwrite=False)
        assert info.value.code == native.constants.NTE_EXISTS
        with native.open_key(provider, name) as again:
            assert native.export_public_spki(again) == spki  # the first key is untouched
    finally:
        native.delete_key(first)


def test_key_names_are_listed_or_the_stub_says_not_supported(provider: Any) -> None:
    """Real Windows lists a key just created; Wine's NCryptEnumKeys is a stub
    (NTE_NOT_SUPPORTED), which callers take as "cannot list"."""
    native = _native()
    name = f"msicert-test-enum-{uuid.uuid4()}"
    created = native.create_rsa_key(provider, name, keyguard=False)
    try:
        if is_wine():
            with pytest.raises(native.NativeError) as info:
                native.enum_key_names(provider)
            assert info.value.function == "NCryptEnumKeys"
            assert info.value.code == native.constants.NTE_NOT_SUPPORTED
            return
        names = native.enum_key_names(provider)
        assert name in names and len(names) == len(set(names))
    finally:
        if not is_wine():
            native.delete_key(created)
        created.close()


def test_key_last_modified_is_now_or_unknown(provider: Any) -> None:
    import time

    native = _native()
    name = f"msicert-test-age-{uuid.uuid4()}"
    with native.create_rsa_key(provider, name, keyguard=False) as created:
        when = native.key_last_modified(created)
        if is_wine():
            assert when is None  # Wine keeps no key properties
        else:
            assert when is not None and abs(when - time.time()) < 600
            native.delete_key(created)
