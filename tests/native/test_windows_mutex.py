"""The per-identity named mutex (Wine tier and real Windows)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from native_testutil import needs_windows

pytestmark = needs_windows


def _native() -> Any:
    import msicert_native

    return msicert_native


def test_named_mutex_excludes_other_threads() -> None:
    native = _native()
    name = f"Local\\msicert-test-{uuid.uuid4()}"
    outcome: list[object] = []

    def contender() -> None:
        try:
            with native.named_mutex(name, 200):
                outcome.append("acquired")
        except native.NativeTimeoutError as exc:
            outcome.append(exc)

    with native.named_mutex(name, 1000) as abandoned:
        assert abandoned is False
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)
    assert "still held" in str(outcome[0])
    # Released: now it is free again.
    with native.named_mutex(name, 1000) as abandoned:
        assert abandoned is False


def test_abandoned_mutex_counts_as_acquired() -> None:
    from msicert_native._backend import impl

    native = _native()
    name = f"Local\\msicert-test-{uuid.uuid4()}"

    def die_holding() -> None:  # owner thread ends without ReleaseMutex
        handle = impl.create_mutex(name)
        assert impl.wait_for_single_object(handle, 1000) == 0
        holder.append(handle)

    holder: list[int] = []
    thread = threading.Thread(target=die_holding)
    thread.start()
    thread.join(30)
    try:
        with native.named_mutex(name, 2000) as abandoned:
            assert abandoned is True
    finally:
        impl.close_handle(holder[0])


def test_mutex_name_errors_are_native_errors() -> None:
    native = _native()
    # A backslash outside a namespace prefix is not a valid mutex name.
    with pytest.raises(native.NativeError) as info, native.named_mutex("Bad\\Ns\\msicert", 10):
        pass
    assert info.value.function == "CreateMutexW"
