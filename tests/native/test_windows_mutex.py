"""The per-identity named mutex (Wine tier and real Windows)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from native_testutil import needs_windows
from neighbours import held_by_another_process

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


# --- msicert's single-flight mutex namespace -------------------------------------------


def _lock_names(location: str = "current-user") -> Any:
    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    return WindowsStore(location).lock(Identity(), timeout=1)


def test_store_mutex_is_global_and_named_after_the_user_sid_and_the_identity() -> None:
    import re

    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    sid = _native().current_user_sid()
    assert re.fullmatch(r"S-1-\d+(-\d+)+", sid), sid
    lock = _lock_names()
    match = re.fullmatch(r"Global\\msicert-(S-[0-9-]+)-([0-9a-f]{32})", lock.name)
    assert match is not None and match.group(1) == sid, lock.name
    assert lock.fallback == f"Local\\msicert-{sid}-{match.group(2)}"
    uami = WindowsStore().lock(Identity.from_selectors(client_id=str(uuid.uuid4())), timeout=1)
    assert uami.name != lock.name and uami.name.startswith(f"Global\\msicert-{sid}-")
    machine = _lock_names("local-machine")
    assert re.fullmatch(r"Global\\msicert-machine-[0-9a-f]{32}", machine.name), machine.name


def test_store_mutex_held_by_another_process_excludes_this_one() -> None:

    lock = _lock_names()
    with held_by_another_process(lock.name), lock.hold(blocking=False) as held:
        assert held is False  # the other process's Global\ mutex is this one
    with lock.hold(blocking=False) as held:
        assert held is True


def test_waiting_for_another_process_mutex_is_one_info_line_then_acquired(
        caplog: pytest.LogCaptureFixture) -> None:
    """The CLI shows waits on stderr: the Windows mutex says it waits, once, as flock does."""
    import logging
    import os
    import subprocess
    import sys

    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    lock = WindowsStore().lock(Identity(), timeout=20)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, msicert_native as n\n"
         f"with n.named_mutex({lock.name!r}, 10000):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(1.5)\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.INFO, logger="msicert"), lock.hold() as held:
            assert held is True
    finally:
        holder.wait(60)
    waits = [r for r in caplog.records if getattr(r, "wait", False)]
    assert len(waits) == 1 and waits[0].levelno == logging.INFO
    assert "waiting for another process" in waits[0].getMessage()
    assert lock.name in waits[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="msicert"), lock.hold() as held:
        assert held is True
    assert not [r for r in caplog.records if getattr(r, "wait", False)]  # free: silent


def _watch_mutexes(monkeypatch: pytest.MonkeyPatch, *, deny_global: bool = False
                   ) -> list[str]:
    """Record every mutex name CreateMutexW is asked for, in order, from now on. With
    ``deny_global``, answer ERROR_ACCESS_DENIED for every Global\\ name (Wine grants them
    all, as a hardened namespace DACL or a low-integrity process would not)."""
    from msicert.backends.windows import _mutex
    from msicert_native import _backend

    native = _native()
    real = _backend.impl.create_mutex
    created: list[str] = []

    def watched(name: str) -> int:
        created.append(name)
        if deny_global and name.startswith("Global\\"):
            raise native.NativeError("CreateMutexW", winerror=5, detail="Access is denied.")
        handle: int = real(name)
        return handle

    monkeypatch.setattr(_backend.impl, "create_mutex", watched)
    monkeypatch.setattr(_mutex, "_warned_fallback", set())
    return created


def test_denied_global_namespace_falls_back_to_local_once_warned_fakes_privilege_boundary(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Wine grants every Global\\ name, so the denial (ERROR_ACCESS_DENIED from CreateMutexW,
    as a hardened namespace DACL or a low-integrity process gets) is injected here."""
    import logging

    created = _watch_mutexes(monkeypatch, deny_global=True)
    lock = _lock_names()
    with caplog.at_level(logging.WARNING, logger="msicert"):
        for _ in range(2):
            with lock.hold() as held:
                assert held is True
    assert created == [lock.name, lock.fallback] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "other logon sessions" in warnings[0]
    assert lock.fallback in warnings[0]
    # The fallback still excludes: a holder of the Local\ name blocks a non-blocking hold.
    outcome: list[bool] = []
    with _native().named_mutex(lock.fallback, 1000):
        thread = threading.Thread(target=lambda: outcome.append(_try(lock)))
        thread.start()
        thread.join(30)
    assert outcome == [False]


def _try(lock: Any) -> bool:
    with lock.hold(blocking=False) as held:
        return bool(held)


def test_other_mutex_errors_are_store_errors_not_a_silent_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from msicert import StoreError
    from msicert_native import _backend

    native = _native()

    def broken(name: str) -> int:
        raise native.NativeError("CreateMutexW", winerror=123, detail="bad name")

    monkeypatch.setattr(_backend.impl, "create_mutex", broken)
    with pytest.raises(StoreError, match="cannot create the mutex Global"), \
            _lock_names().hold():
        pass


def test_global_store_mutex_needs_no_privilege_and_no_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SeCreateGlobalPrivilege guards file mappings (and symbolic links) in Global\\, not
    mutexes: a plain user's process creates the store mutex there. Real Windows shows it
    (windows-latest); Wine grants every Global\\ name anyway."""
    created = _watch_mutexes(monkeypatch)
    lock = _lock_names()
    with lock.hold() as held:
        assert held is True
    assert created == [lock.name]


# --- the store-write mutex shared with MSAL.NET and MSAL Go ---------------------------------


def test_store_write_mutex_uses_local_only_when_global_is_denied_fakes_privilege_boundary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """InterprocessLock.TryWithAliasLock: Local\\ only after UnauthorizedAccessException on
    Global\\ (the denial is injected: Wine grants every Global\\ name)."""
    from msicert.backends.windows import _mutex

    created = _watch_mutexes(monkeypatch, deny_global=True)
    lock = _mutex.SharedStoreLock(f"fallback-{uuid.uuid4()}#att=0")
    with lock.hold() as held:
        assert held is True
    assert created == [lock.name, lock.fallback]
    assert lock.fallback == "Local\\" + lock.name[len("Global\\"):]


def test_busy_store_write_mutex_is_busy_not_a_reason_to_take_the_local_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Global\\ mutex held elsewhere means "skip", never "try Local\\" (the reference falls
    back only when Global\\ is unauthorized)."""
    from msicert.backends.windows._mutex import SharedStoreLock

    lock = SharedStoreLock(f"busy-{uuid.uuid4()}#att=0")
    with held_by_another_process(lock.name):
        created = _watch_mutexes(monkeypatch)
        with lock.hold(0.3) as held:
            assert held is False
        assert created == [lock.name]  # Local\ was not tried
    with lock.hold(0.3) as held:
        assert held is True
