"""CurrentUser\\My through msicert_native (Wine tier and real Windows)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from typing import Any

import pytest
from certs import leaf
from native_testutil import needs_windows

pytestmark = needs_windows

ISSUER = "msi-issuer"  # + the marker: unique, and within the 64-character CN limit


def _native() -> Any:
    import msicert_native

    return msicert_native


def _subjects(refs: list[Any]) -> set[bytes]:
    return {ref.der for ref in refs}


def _close(refs: list[Any]) -> None:
    for ref in refs:
        ref.close()


def test_add_find_properties_delete(user_store: Any, marker: str) -> None:
    native = _native()
    client_id = str(uuid.uuid4())
    der = leaf(client_id, marker, f"{ISSUER}-{marker}")
    with native.add_certificate(
        user_store, der, friendly_name=f"msicert {marker}", key_name=f"key-{marker}"
    ) as ref:
        assert ref.der == der
        assert native.get_friendly_name(ref) == f"msicert {marker}"
        info = native.get_key_prov_info(ref)
        assert info == native.KeyProvInfo(f"key-{marker}", native.MS_KEY_STORAGE_PROVIDER, 0, 0, 0)

    by_subject = native.find_certificates(user_store, subject_substr=client_id)
    everything = native.enum_certificates(user_store)
    try:
        assert _subjects(by_subject) == {der}
        assert der in _subjects(everything)
        assert native.get_friendly_name(by_subject[0]) == f"msicert {marker}"
        native.delete_certificate(user_store, by_subject[0])
        assert not by_subject[0].closed  # the caller's reference survives the delete
    finally:
        _close(by_subject + everything)
    assert native.find_certificates(user_store, subject_substr=client_id) == []


def test_find_by_issuer(user_store: Any, marker: str) -> None:
    native = _native()
    client_id = str(uuid.uuid4())
    issuer = f"{ISSUER}-{marker}"
    der = leaf(client_id, marker, issuer)
    native.add_certificate(user_store, der, friendly_name=None, key_name=None).close()
    by_issuer = native.find_certificates(user_store, issuer_substr=issuer)
    both = native.find_certificates(user_store, subject_substr=marker, issuer_substr=issuer)
    wrong_issuer = native.find_certificates(
        user_store, subject_substr=client_id, issuer_substr=f"other-{marker}"
    )
    not_the_subject = native.find_certificates(user_store, issuer_substr=client_id)
    try:
        assert _subjects(by_issuer) == {der}
        assert _subjects(both) == {der}
        assert wrong_issuer == []
        assert der not in _subjects(not_the_subject)
    finally:
        _close(by_issuer + both + not_the_subject)


def test_find_is_case_insensitive_substring(user_store: Any, marker: str) -> None:
    native = _native()
    der = leaf("Case-Subject", marker, "Case-Issuer")
    native.add_certificate(user_store, der, friendly_name=None, key_name=None).close()
    found = native.find_certificates(user_store, subject_substr=marker.upper())
    try:
        assert _subjects(found) == {der}
        assert native.get_friendly_name(found[0]) is None
        assert native.get_key_prov_info(found[0]) is None
    finally:
        _close(found)


def test_replace_existing_updates_properties(user_store: Any, marker: str) -> None:
    native = _native()
    der = leaf(str(uuid.uuid4()), marker, "Replace-Issuer")
    native.add_certificate(user_store, der, friendly_name="first", key_name="k1").close()
    native.add_certificate(user_store, der, friendly_name="second", key_name="k2").close()
    found = native.find_certificates(user_store, subject_substr=marker)
    try:
        assert len(found) == 1
        assert native.get_friendly_name(found[0]) == "second"
        assert native.get_key_prov_info(found[0]).container == "k2"
        native.set_friendly_name(found[0], "third")
        assert native.get_friendly_name(found[0]) == "third"
    finally:
        _close(found)


def test_collect_then_delete_many(user_store: Any, marker: str) -> None:
    native = _native()
    ders = {leaf(f"bulk-{i}", marker, "Bulk-Issuer") for i in range(4)}
    for der in ders:
        native.add_certificate(user_store, der, friendly_name=marker, key_name=None).close()
    collected = [ref for ref in native.enum_certificates(user_store)]
    mine = [ref for ref in collected if ref.der in ders]
    try:
        assert len(mine) == 4
        for ref in mine:  # never while enumerating: the list is complete before any delete
            native.delete_certificate(user_store, ref)
    finally:
        _close(collected)
    assert native.find_certificates(user_store, subject_substr=marker) == []


_CHILD = textwrap.dedent(
    """
    import sys
    import msicert_native as n
    with n.open_system_store("current-user", "My") as store:
        refs = n.find_certificates(store, subject_substr=sys.argv[1])
        print(len(refs), [n.get_friendly_name(r) for r in refs])
        if sys.argv[2] == "delete":
            for r in refs:
                n.delete_certificate(store, r)
        for r in refs:
            r.close()
    """
)


def _child(marker: str, action: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, marker, action],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_changes_survive_the_process(user_store: Any, marker: str) -> None:
    """add in this process -> seen by another; deleted by another -> gone here (commit)."""
    native = _native()
    der = leaf(str(uuid.uuid4()), marker, "Persist-Issuer")
    native.add_certificate(user_store, der, friendly_name="persisted", key_name=None).close()
    assert _child(marker, "list") == "1 ['persisted']"
    assert _child(marker, "delete") == "1 ['persisted']"
    assert _child(marker, "list") == "0 []"
    with native.open_system_store("current-user", "My") as fresh:
        assert native.find_certificates(fresh, subject_substr=marker) == []


def test_bad_input_raises_native_error(user_store: Any) -> None:
    native = _native()
    with pytest.raises(native.NativeError) as info:
        native.add_certificate(user_store, b"not a certificate", friendly_name=None, key_name=None)
    assert info.value.function == "CertCreateCertificateContext"
    assert info.value.winerror
    with pytest.raises(ValueError):
        native.open_system_store("everyone", "My")


def test_closed_handles_refuse_use(marker: str) -> None:
    native = _native()
    store = native.open_system_store("current-user", "My")
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(ValueError):
        native.enum_certificates(store)


def test_local_machine_store_opens_and_enumerates() -> None:
    """LocalMachine\\My opens with the rights the caller has (read-only for a non-admin)."""
    native = _native()
    with native.open_system_store("local-machine", "My") as store:
        refs = native.enum_certificates(store)
        assert all(isinstance(ref.der, bytes) for ref in refs)
        _close(refs)


def test_duplicate_reference_outlives_the_original(user_store: Any, marker: str) -> None:
    native = _native()
    der = leaf("dup", marker, "Dup-Issuer")
    with native.add_certificate(user_store, der, friendly_name="dup", key_name=None) as ref:
        copy = ref.duplicate()
    with copy:
        assert copy.der == der and native.get_friendly_name(copy) == "dup"


def test_memory_certificate_carries_its_key_link_and_stays_out_of_every_store(
        user_store: Any, marker: str) -> None:
    native = _native()
    der = leaf(str(uuid.uuid4()), marker, "Memory-Issuer")
    spec = native.constants.CERT_NCRYPT_KEY_SPEC
    with native.memory_certificate(der, friendly_name=f"mem {marker}", key_name="KeyGuardRSAKey",
                                   key_spec=spec) as ref:
        assert ref.der == der
        assert native.get_friendly_name(ref) == f"mem {marker}"
        assert native.get_key_prov_info(ref) == native.KeyProvInfo(
            "KeyGuardRSAKey", native.MS_KEY_STORAGE_PROVIDER, 0, 0, spec)
    assert native.find_certificates(user_store, subject_substr=marker) == []
