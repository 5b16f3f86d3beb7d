"""Fixtures for the native-layer tests (Linux, Wine tier and real Windows)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from native_testutil import is_windows


@pytest.fixture
def marker() -> str:
    """A unique DC value: every certificate a test adds carries it, so cleanup is exact."""
    return f"msicert-native-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def user_store(marker: str) -> Iterator[Any]:
    """CurrentUser\\My, cleaned of this test's certificates afterwards (collect, then delete)."""
    if not is_windows():
        pytest.skip("needs Windows (run by the Wine tier / windows-latest)")
    import msicert_native as native

    with native.open_system_store("current-user", "My") as store:
        try:
            yield store
        finally:
            leftovers = native.find_certificates(store, subject_substr=marker)
            for ref in leftovers:
                with ref:
                    native.delete_certificate(store, ref)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test starts as a new process would: no open binding key, no key verdicts, no
    certificate kept in memory (tests monkeypatch what a key reports, e.g. VBS isolation)."""
    yield
    if not is_windows():
        return
    from msicert.backends.windows import _cert_store, _ncrypt_key

    _ncrypt_key.forget_binding_keys()
    _cert_store._probed.clear()
    for kept in _cert_store._unpersisted.values():
        kept.ref.close()
    _cert_store._unpersisted.clear()
