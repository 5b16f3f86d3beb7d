"""The Windows shared token cache (Wine tier and real Windows): DPAPI through both backends (the
tier runs this file once per backend), the encrypted file under the user's local application
data, and a new ``msicert token`` process served from it with zero ESTS calls.

DPAPI works under Wine (user-scope keys in the prefix); WinHTTP cannot present a CNG key there,
so the token the new process is served was put in the cache the way a fetch puts it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from native_testutil import REPO_ROOT, needs_windows

sys.path.insert(0, str(REPO_ROOT))

pytestmark = needs_windows

IMDS = os.environ.get("MSICERT_WINE_IMDS", "")
SECRET = b'{"format":"msicert-tokens/1","identity":"system","tokens":[]}'


@pytest.fixture
def local_app_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    base = tmp_path / "LocalAppData"
    monkeypatch.setenv("LOCALAPPDATA", str(base))
    return base


def test_dpapi_round_trips_for_this_user_and_refuses_other_entropy_or_a_changed_blob() -> None:
    import msicert_native as native

    blob = native.protect_data(SECRET, entropy=b"msicert-test")
    assert SECRET not in blob and b"msicert-tokens" not in blob
    assert native.unprotect_data(blob, entropy=b"msicert-test") == SECRET
    assert native.protect_data(SECRET, entropy=b"msicert-test") != blob  # salted each time
    with pytest.raises(native.NativeError) as other:
        native.unprotect_data(blob, entropy=b"another purpose")
    assert other.value.function == "CryptUnprotectData"
    changed = bytearray(blob)
    changed[-1] ^= 0x01
    with pytest.raises(native.NativeError):
        native.unprotect_data(bytes(changed), entropy=b"msicert-test")


def test_the_store_keeps_the_cache_as_a_dpapi_file_under_local_app_data(
        local_app_data: Path) -> None:
    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    uami = Identity.from_selectors(client_id="22222222-2222-3333-4444-555555555555")
    store = WindowsStore("current-user")
    assert store.write_tokens(Identity(), SECRET) is True
    assert store.write_tokens(uami, b"{}") is True
    path = local_app_data / "msicert" / "tokens" / "current-user.tokens"
    assert path.is_file() and SECRET not in path.read_bytes()
    assert (local_app_data / "msicert" / "tokens" /
            "current-user.client_id-22222222-2222-3333-4444-555555555555.tokens").is_file()
    assert store.read_tokens(Identity()) == SECRET
    assert WindowsStore("local-machine").read_tokens(Identity()) is None  # its own file
    assert store.write_tokens(Identity(), None) is True and not path.exists()
    assert store.read_tokens(Identity()) is None


def test_another_identitys_blob_or_garbage_is_ignored_with_one_warning(
        local_app_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    from msicert import Identity
    from msicert.backends.windows._cert_store import WindowsStore

    uami = Identity.from_selectors(client_id="22222222-2222-3333-4444-555555555555")
    store = WindowsStore("current-user")
    store.write_tokens(uami, SECRET)
    folder = local_app_data / "msicert" / "tokens"
    theirs = folder / "current-user.client_id-22222222-2222-3333-4444-555555555555.tokens"
    (folder / "current-user.tokens").write_bytes(theirs.read_bytes())  # copied across
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "shared token cache" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="msicert"):
        assert store.read_tokens(Identity()) is None
        assert store.read_tokens(Identity()) is None
        first = warnings()
        assert len(first) == 1 and "this user cannot decrypt it" in first[0], first
        (folder / "current-user.tokens").write_bytes(b"not a dpapi blob")
        assert store.read_tokens(Identity()) is None
        assert store.read_tokens(Identity()) is None
    # Wine gives both failures one text (winerror 13): said once; Windows may word them apart
    assert len(warnings()) in (1, 2) and len(set(warnings())) == len(warnings())
    assert store.write_tokens(Identity(), b"{}") is True  # rebuilt by the next write
    assert store.read_tokens(Identity()) == b"{}"


@pytest.fixture
def emulator_store(local_app_data: Path) -> Iterator[dict[str, str]]:
    if not IMDS:
        pytest.skip("no emulator (tools/wine/run.sh starts one and sets MSICERT_WINE_IMDS)")
    env = dict(os.environ)
    env.update({"AZURE_POD_IDENTITY_AUTHORITY_HOST": IMDS, "MSICERT_IMDS_RETRY_SCALE": "0.01",
                "PYTHONPATH": str(REPO_ROOT), "LOCALAPPDATA": str(local_app_data)})
    _msicert(env, "purge")
    yield env
    _msicert(env, "purge")


def _msicert(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msicert", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def _token_requests() -> int:
    with urllib.request.urlopen(f"{IMDS}/__emulator__/stats", timeout=10) as resp:
        count: int = json.loads(resp.read())["counts"].get("token", 0)
        return count


def test_a_new_msicert_token_process_is_served_from_the_cache_with_zero_ests_calls(
        emulator_store: dict[str, str]) -> None:
    from msicert import Identity
    from msicert._shared_tokens import CachedToken, SharedTokens
    from msicert.backends.windows._cert_store import WindowsStore

    cert = _msicert(emulator_store, "cert", "--json")
    assert cert.returncode == 0, cert.stderr
    x5t = json.loads(cert.stdout)["x5t_s256"]
    now = time.time()
    shared = SharedTokens(WindowsStore("current-user"), Identity(), fetch_wait=lambda: 5.0)
    shared.put(CachedToken("https://vault.azure.net/.default", x5t, "eyJ.wine-shared.token",
                           int(now) + 3000, now + 1500, now + 2700, now), now)
    before = _token_requests()
    out = _msicert(emulator_store, "token", "--resource", "https://vault.azure.net", "--json")
    assert out.returncode == 0, out.stderr
    token: dict[str, Any] = json.loads(out.stdout)
    assert (token["source"], token["access_token"], token["x5t_s256"]) == (
        "shared_cache", "eyJ.wine-shared.token", x5t)
    assert _token_requests() == before
    status = json.loads(_msicert(emulator_store, "status", "--json").stdout)
    assert status["tokens_cached"] == 1 and "eyJ.wine-shared.token" not in json.dumps(status)
    purged = _msicert(emulator_store, "purge")
    assert purged.stdout.splitlines() == ["removed 1 entry and 1 cached token", f"  {x5t}"]
    assert not (Path(emulator_store["LOCALAPPDATA"]) / "msicert" / "tokens" /
                "current-user.tokens").exists()
