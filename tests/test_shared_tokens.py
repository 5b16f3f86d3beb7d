"""The shared token cache: a token in a new client or process with zero ESTS calls, opt-out,
claims and revocation replacing entries, purge and status, and never a reason to fail.

Real clients, the real emulator, real files, modes and processes; the emulator counts the
ESTS token requests (``emu.count("token")``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from msicert import ManagedIdentityClient, TokenError
from msicert._shared_tokens import (
    MAX_ENTRIES,
    MAX_TOKEN_CHARS,
    CachedToken,
    SharedTokens,
    decode,
    encode,
)
from msicert.backends.contract import MAX_TOKEN_CACHE_BYTES
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault
from tests.conftest import cli_json, run_cli

VAULT = "https://vault.azure.net"
STORAGE = "https://storage.azure.com"
UAMI = "11111111-2222-3333-4444-555555555555"


def _tokens_file(store_dir: str) -> Path:
    return Path(store_dir, "msal_mtls.tokens")


def _cached(store_dir: str, alias: str = "system") -> list[CachedToken]:
    return decode(_tokens_file(store_dir).read_bytes(), alias)


def _scopes(emu) -> Counter[str]:
    return Counter(parse_qs(r.body.decode())["scope"][0]
                   for r in emu.requests if r.endpoint == "token" and r.method == "POST")


def _shared_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "shared token cache" in r.getMessage()]


# --- on by default, next to the store -----------------------------------------------------------
def test_a_second_client_gets_the_token_the_first_fetched_without_asking_ests(make_client, emu):
    first = make_client().acquire_token(VAULT)
    other = make_client()  # a new client: empty memory, same store
    shared = other.acquire_token(VAULT)
    again = other.acquire_token(VAULT)
    assert (first.source, shared.source, again.source) == (
        "identity_provider", "shared_cache", "cache")
    assert shared.access_token == again.access_token == first.access_token
    assert (shared.expires_on, shared.x5t_s256, shared.refresh_on) == (
        first.expires_on, first.x5t_s256, first.refresh_on)
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1
    assert other.token_cache == "shared"


def test_a_new_process_gets_its_token_from_the_shared_cache_with_zero_ests_calls(emu, store_dir):
    cold = cli_json("token", "--resource", VAULT, "--store-dir", store_dir)
    warm = cli_json("token", "--resource", VAULT, "--store-dir", store_dir)
    assert (cold["source"], warm["source"]) == ("identity_provider", "shared_cache")
    assert warm["access_token"] == cold["access_token"]
    assert emu.count("token") == 1 and emu.count("issuecredential") == 1


def test_processes_started_by_multiprocessing_spawn_share_one_token(emu, store_dir):
    import multiprocessing

    parent = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url)
    token = parent.acquire_token(VAULT)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_child_token, [(store_dir, emu.imds_url)] * 2)
    assert got == [("shared_cache", token.access_token)] * 2
    assert emu.count("token") == 1


def _child_token(store_dir: str, imds: str) -> tuple[str, str]:
    token = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=imds).acquire_token(VAULT)
    return token.source, token.access_token


def test_the_cache_is_a_0600_file_of_ours_beside_the_certificate_whatever_the_umask(
        make_client, emu, store_dir):
    old = os.umask(0)
    try:
        make_client().acquire_token(VAULT)
    finally:
        os.umask(old)
    st = os.lstat(_tokens_file(store_dir))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    (token,) = _cached(store_dir)
    assert token.scope == f"{VAULT}/.default"
    assert token.x5t_s256 == make_client().get_certificate().x5t_s256


def test_memory_stays_in_front_so_a_shared_token_is_read_from_disk_once(make_client, emu,
                                                                        store_dir):
    make_client().acquire_token(VAULT)
    client = make_client()
    assert client.acquire_token(VAULT).source == "shared_cache"
    _tokens_file(store_dir).unlink()
    assert client.acquire_token(VAULT).source == "cache"  # memory, not the (gone) file
    assert not _tokens_file(store_dir).exists()  # a memory hit writes nothing
    assert emu.count("token") == 1


def test_a_token_bound_to_a_rotated_certificate_is_never_served(make_client, emu, store_dir):
    now = [time.time()]
    first = make_client(clock=lambda: now[0])
    old_token = first.acquire_token(VAULT)
    old = first.get_certificate()
    emu.lifetime = 100000.0  # the renewal is fresh at the clock below
    now[0] = old.renew_after_ts + 1  # due: the next lookup renews (still valid, token too)
    renewed = make_client(clock=lambda: now[0]).get_certificate()
    assert renewed.x5t_s256 != old.x5t_s256 and renewed.source == "imds"
    assert [t.x5t_s256 for t in _cached(store_dir)] == [old.x5t_s256]  # still servable there
    token = make_client(clock=lambda: now[0]).acquire_token(VAULT)
    assert token.source == "identity_provider" and token.x5t_s256 == renewed.x5t_s256
    assert token.access_token != old_token.access_token
    assert emu.count("token") == 2
    assert {t.x5t_s256 for t in _cached(store_dir)} == {old.x5t_s256, renewed.x5t_s256}


def test_at_most_64_tokens_are_kept_the_oldest_going_first(make_client, emu, store_dir):
    client = make_client()
    names = [f"https://r{i}.example" for i in range(MAX_ENTRIES + 6)]
    for name in names:
        client.acquire_token(name)
    kept = _cached(store_dir)
    assert [t.resource for t in kept] == names[6:]
    other = make_client()
    assert other.acquire_token(names[-1]).source == "shared_cache"
    assert other.acquire_token(names[0]).source == "identity_provider"
    assert emu.count("token") == len(names) + 1


def test_the_file_stays_within_its_byte_bound_and_a_huge_token_stays_in_its_process(store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    from msicert import Identity

    shared = SharedTokens(store, Identity(), fetch_wait=lambda: 5.0)
    now = time.time()
    x5t = "A" * 43

    def token(i: int, size: int) -> CachedToken:
        return CachedToken(f"https://b{i}.example/.default", x5t, "t" * size, int(now) + 3600,
                           now + 1800, now + 3300, now + i)

    for i in range(MAX_ENTRIES):
        shared.put(token(i, 8 * 1024), now)
    data = _tokens_file(store_dir).read_bytes()
    assert len(data) <= MAX_TOKEN_CACHE_BYTES
    kept = [t.scope for t in decode(data, "system")]
    assert 0 < len(kept) < MAX_ENTRIES and kept[-1] == "https://b63.example/.default"
    assert kept == [f"https://b{i}.example/.default" for i in range(64 - len(kept), 64)]
    shared.put(token(99, MAX_TOKEN_CHARS + 1), now)
    assert shared.get("https://b99.example/.default", x5t, now) is None
    assert shared.get("https://b63.example/.default", x5t, now) is not None


# --- opt-out ------------------------------------------------------------------------------------
def test_token_cache_process_keeps_tokens_in_memory_only(make_client, emu, store_dir):
    a = make_client(token_cache="process")
    b = make_client(token_cache="process")
    assert (a.acquire_token(VAULT).source, b.acquire_token(VAULT).source) == (
        "identity_provider", "identity_provider")
    assert a.acquire_token(VAULT).source == "cache"
    assert not _tokens_file(store_dir).exists()
    assert emu.count("token") == 2


def test_the_environment_turns_it_off_and_the_keyword_wins(emu, store_dir, monkeypatch):
    env = {"MSICERT_TOKEN_CACHE": "process"}
    first = cli_json("token", "--resource", VAULT, "--store-dir", store_dir, env=env)
    second = cli_json("token", "--resource", VAULT, "--store-dir", store_dir, env=env)
    assert (first["source"], second["source"]) == ("identity_provider", "identity_provider")
    assert not _tokens_file(store_dir).exists() and emu.count("token") == 2
    monkeypatch.setenv("MSICERT_TOKEN_CACHE", "process")
    assert ManagedIdentityClient(store_dir=store_dir).token_cache == "process"
    assert ManagedIdentityClient(store_dir=store_dir, token_cache="shared").token_cache == "shared"
    monkeypatch.setenv("MSICERT_TOKEN_CACHE", " Shared ")
    assert ManagedIdentityClient(store_dir=store_dir).token_cache == "shared"


def test_an_unknown_mode_is_refused_and_a_bad_environment_value_warns_once(store_dir, monkeypatch,
                                                                         caplog):
    with pytest.raises(ValueError, match="token_cache must be 'shared' or 'process', not 'disk'"):
        ManagedIdentityClient(store_dir=store_dir, token_cache="disk")
    monkeypatch.setenv("MSICERT_TOKEN_CACHE", "memory")
    with caplog.at_level(logging.WARNING, logger="msicert"):
        modes = [ManagedIdentityClient(store_dir=store_dir).token_cache for _ in range(2)]
    assert modes == ["shared", "shared"]
    warned = [r.getMessage() for r in caplog.records if "MSICERT_TOKEN_CACHE" in r.getMessage()]
    assert warned == ["ignoring MSICERT_TOKEN_CACHE='memory': not 'shared' or 'process'; using "
                      "'shared'"]


# --- claims and revocation replace what other processes read ------------------------------------
def test_a_claims_token_replaces_the_shared_one_and_new_clients_never_get_the_challenged_one(
        make_client, emu, store_dir):
    client = make_client()
    challenged = client.acquire_token(VAULT)
    claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
    answer = client.acquire_token(VAULT, claims=claims)
    assert answer.x5t_s256 != challenged.x5t_s256  # a fresh certificate (bypass_cache)
    assert [(t.x5t_s256, t.access_token) for t in _cached(store_dir)] == [
        (answer.x5t_s256, answer.access_token)]
    other = make_client().acquire_token(VAULT)
    assert (other.source, other.access_token) == ("shared_cache", answer.access_token)
    assert emu.count("token") == 2 and emu.count("issuecredential") == 2


def test_revocation_remediation_drops_the_refused_certificates_tokens_for_every_process(
        make_client, emu, store_dir):
    client = make_client()
    refused = client.acquire_token(VAULT).x5t_s256
    emu.inject("token", Fault(kind="invalid_client", times=1))
    storage = client.acquire_token(STORAGE)  # invalid_client: new certificate, new token
    assert storage.x5t_s256 != refused
    assert [(t.resource, t.x5t_s256) for t in _cached(store_dir)] == [
        (STORAGE, storage.x5t_s256)]
    other = make_client()
    vault = other.acquire_token(VAULT)
    assert vault.source == "identity_provider" and vault.x5t_s256 == storage.x5t_s256
    assert other.acquire_token(STORAGE).source == "shared_cache"
    assert emu.count("token") == 4 and emu.count("issuecredential") == 2


# --- purge and status ---------------------------------------------------------------------------
def test_purge_removes_the_tokens_too_and_says_how_many(emu, store_dir):
    for resource in (VAULT, STORAGE):
        cli_json("token", "--resource", resource, "--store-dir", store_dir)
    proc = run_cli("purge", "--store-dir", store_dir)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "removed 1 entry and 2 cached tokens"
    assert not _tokens_file(store_dir).exists()
    assert cli_json("token", "--resource", VAULT, "--store-dir", store_dir)["source"] == (
        "identity_provider")
    purged = cli_json("purge", "--store-dir", store_dir)
    assert (purged["removed"], purged["tokens_removed"], len(purged["entries"])) == (1, 1, 1)
    assert emu.count("token") == 3


def test_purge_removes_the_tokens_whatever_token_cache_says(make_client, emu, store_dir):
    make_client().acquire_token(VAULT)
    assert len(make_client(token_cache="process").purge()) == 1
    assert not _tokens_file(store_dir).exists()


def test_status_shows_how_many_tokens_and_their_expiry_never_the_tokens(emu, store_dir):
    tokens = [cli_json("token", "--resource", r, "--store-dir", store_dir)
              for r in (VAULT, STORAGE)]
    text = run_cli("status", "--store-dir", store_dir)
    as_json = run_cli("status", "--store-dir", store_dir, "--json")
    every = run_cli("status", "--all", "--store-dir", store_dir, "--json")
    every_text = run_cli("status", "--all", "--store-dir", store_dir)
    for proc in (text, as_json, every, every_text):
        assert proc.returncode == 0, proc.stderr
        assert not any(t["access_token"] in proc.stdout for t in tokens)
        assert not any(t["access_token"].split(".")[1] in proc.stdout for t in tokens)
    doc = json.loads(as_json.stdout)
    assert doc["tokens_cached"] == 2
    assert [t["resource"] for t in doc["tokens"]] == [VAULT, STORAGE]
    for row, token in zip(doc["tokens"], tokens, strict=True):
        assert set(row) == {"resource", "x5t_s256", "bound_to_stored_certificate",
                            "expires_on", "expires_in_seconds", "refresh_on"}
        assert row["x5t_s256"] == doc["x5t_s256"] and row["bound_to_stored_certificate"]
        assert row["expires_on"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                  time.gmtime(token["expires_on"]))
        assert 0 < row["expires_in_seconds"] <= 3600
    lines = text.stdout.splitlines()
    assert "tokens_cached       2" in lines
    assert [line.split("  ")[2] for line in lines if line.startswith("  token  ")] == [
        VAULT, STORAGE]
    assert all("expires in " in line for line in lines if line.startswith("  token  "))
    (row,) = json.loads(every.stdout)["identities"]
    assert row["tokens_cached"] == 2
    assert every_text.stdout.rstrip().endswith("(fresh), 2 tokens cached")
    assert emu.count("token") == 2


# --- never a reason to fail ---------------------------------------------------------------------
def _garbage(path: Path) -> str:
    path.write_bytes(b"\x00\xffnot json")
    return "not JSON"


def _truncated(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "not JSON (truncated?)"


def _another_identity(path: Path) -> str:
    doc = json.loads(path.read_bytes())
    doc["identity"] = f"client_id={UAMI}"
    path.write_bytes(json.dumps(doc).encode())
    return "written for another identity"


def _line_break_in_a_token(path: Path) -> str:
    doc = json.loads(path.read_bytes())
    doc["tokens"][0]["access_token"] += "\r\nX-Injected: 1"
    path.write_bytes(json.dumps(doc).encode())
    return "not visible ASCII"


def _world_readable(path: Path) -> str:
    path.chmod(0o644)
    return "mode 0644 opens it to other users"


def _group_writable(path: Path) -> str:
    path.chmod(0o620)
    return "mode 0620 opens it to other users"


def _foreign_owner(path: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("giving the file to another uid needs root")
    os.chown(path, 12345, 12345)
    return "owned by uid 12345"


def _symlink(path: Path) -> str:
    target = path.with_name("elsewhere")
    path.rename(target)
    path.symlink_to(target)
    return "it is a symlink"


@pytest.mark.parametrize("spoil", [_garbage, _truncated, _another_identity,
                                   _line_break_in_a_token, _world_readable, _group_writable,
                                   _foreign_owner, _symlink])
def test_an_unusable_cache_file_is_ignored_with_one_warning_and_rebuilt(
        make_client, emu, store_dir, caplog, spoil):
    make_client().acquire_token(VAULT)
    path = _tokens_file(store_dir)
    why = spoil(path)
    spoiled = path.read_bytes() if not path.is_symlink() else None
    client = make_client()
    with caplog.at_level(logging.WARNING, logger="msicert"):
        fetched = client.acquire_token(VAULT)
        assert client.acquire_token(STORAGE).source == "identity_provider"  # read again
        assert make_client().acquire_token(VAULT).source == "shared_cache"  # rebuilt
    assert fetched.source == "identity_provider"  # the spoiled file was not trusted
    warnings = _shared_warnings(caplog)
    assert len(warnings) == 1 and why in warnings[0], warnings
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert [t.access_token for t in _cached(store_dir)][-2:] != []
    assert {t.resource for t in _cached(store_dir)} == {VAULT, STORAGE}
    if spoil is _symlink:
        assert path.with_name("elsewhere").read_bytes() != path.read_bytes()  # target untouched
    else:
        assert spoiled != path.read_bytes()
    assert emu.count("token") == 3


def test_a_cache_file_another_user_could_write_is_never_read(make_client, emu, store_dir):
    """Even a perfectly valid file is refused while its mode lets others write it."""
    make_client().acquire_token(VAULT)
    _tokens_file(store_dir).chmod(0o622)
    assert make_client().acquire_token(VAULT).source == "identity_provider"
    assert emu.count("token") == 2


def test_only_what_msicert_wrote_for_the_identity_decodes_and_no_error_quotes_a_token():
    now = time.time()
    good = CachedToken(f"{VAULT}/.default", "B" * 43, "eyJ.secret-part.sig", int(now) + 60,
                       now + 10, now + 30, now)
    assert decode(encode("system", [good]), "system") == [good]
    doc = json.loads(encode("system", [good]))
    cases = {
        "written for another identity": ({**doc, "identity": "client_id=x"}, "system"),
        "not an msicert-tokens/1 document": ({**doc, "format": "msicert-tokens/2"}, "system"),
        "a scope and certificate appear twice": ({**doc, "tokens": doc["tokens"] * 2}, "system"),
        "out of order": ({**doc, "tokens": [{**doc["tokens"][0], "refresh_on": now + 40}]},
                         "system"),
        "expires_on is not an integer": (
            {**doc, "tokens": [{**doc["tokens"][0], "expires_on": True}]}, "system"),
        "refresh_on is not a finite number": (
            {**doc, "tokens": [{**doc["tokens"][0], "refresh_on": float("nan")}]}, "system"),
        "no usable certificate thumbprint": (
            {**doc, "tokens": [{**doc["tokens"][0], "x5t_s256": "short"}]}, "system"),
        "not visible ASCII": (
            {**doc, "tokens": [{**doc["tokens"][0], "access_token": "eyJ secret"}]}, "system"),
        f"no list of at most {MAX_ENTRIES} tokens": (
            {**doc, "tokens": doc["tokens"] * (MAX_ENTRIES + 1)}, "system"),
    }
    for why, (bad, alias) in cases.items():
        with pytest.raises(ValueError, match=why) as refused:
            decode(json.dumps(bad).encode(), alias)
        assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="larger than"):
        decode(b" " * (MAX_TOKEN_CACHE_BYTES + 1), "system")


def test_a_cache_file_changed_in_place_after_a_read_is_read_again(make_client, emu, store_dir):
    """The file store remembers what it read by the file's identity (inode, size, times):
    a change in place, even to bytes of the same length, is never answered from memory."""
    make_client().acquire_token(VAULT)
    assert make_client().acquire_token(VAULT).source == "shared_cache"  # read and remembered
    path = _tokens_file(store_dir)
    data = path.read_bytes()
    stat_before = os.stat(path)
    with open(path, "r+b") as f:  # same inode, same size
        f.write(data.replace(b'"format":"msicert-tokens/1"', b'"format":"msicert-tokens/9"'))
    assert os.stat(path).st_ino == stat_before.st_ino
    assert make_client().acquire_token(VAULT).source == "identity_provider"
    assert emu.count("token") == 2


# --- refresh across processes -------------------------------------------------------------------
def _clocked(make_client, emu):
    """Clients on one clock, certificates that outlive the token (refresh_in = 1800 s)."""
    emu.lifetime, emu.token_lifetime = 86400.0 * 3, 3600.0
    now = [time.time()]
    return now, (lambda **kw: make_client(clock=lambda: now[0], **kw))


def test_a_due_shared_token_is_refreshed_once_and_every_client_moves_to_the_new_one(
        make_client, emu):
    now, clocked = _clocked(make_client, emu)
    holder = clocked()
    first = holder.acquire_token(VAULT)
    now[0] = first.refresh_on + 1  # due, still servable
    refreshed = clocked().acquire_token(VAULT)  # a new client: finds it due, asks ESTS
    assert refreshed.source == "identity_provider"
    assert refreshed.access_token != first.access_token
    assert clocked().acquire_token(VAULT).access_token == refreshed.access_token
    moved = holder.acquire_token(VAULT)  # its own copy is due: it takes the shared one
    assert (moved.source, moved.access_token) == ("shared_cache", refreshed.access_token)
    assert emu.count("token") == 2


HOLD_SCOPE_LOCK = r"""
import sys, time
from msicert import Identity
from msicert.backends.posix._file_store import FileStore
with FileStore(sys.argv[1]).token_lock(Identity(), sys.argv[2], timeout=5).hold():
    print("held", flush=True)
    time.sleep(30)
"""


def test_while_another_process_refreshes_a_due_shared_token_it_is_served_without_waiting(
        make_client, emu, store_dir):
    import subprocess
    import sys

    from tests.conftest import ROOT, cli_env

    now, clocked = _clocked(make_client, emu)
    first = clocked().acquire_token(VAULT)
    now[0] = first.refresh_on + 1
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCOPE_LOCK, store_dir,
                               f"{VAULT}/.default"], stdout=subprocess.PIPE, text=True,
                              env=cli_env(), cwd=str(ROOT))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        served = clocked().acquire_token(VAULT)
        assert holder.poll() is None  # still held: nobody waited for it
    finally:
        holder.kill()
        holder.wait(10)
    assert (served.source, served.access_token) == ("shared_cache", first.access_token)
    assert emu.count("token") == 1


def test_when_the_refresh_of_a_due_shared_token_fails_the_token_is_still_served(
        make_client, emu, caplog):
    now, clocked = _clocked(make_client, emu)
    first = clocked().acquire_token(VAULT)
    now[0] = first.refresh_on + 1
    emu.inject("token", Fault(status=400, times=None))
    with caplog.at_level(logging.WARNING, logger="msicert"):
        served = clocked().acquire_token(VAULT)
    emu.clear_faults()
    assert (served.source, served.access_token) == ("shared_cache", first.access_token)
    assert any("token refresh failed; serving the shared cached token" in r.getMessage()
               for r in caplog.records)
    now[0] = first.expires_on  # past serve_until: never served, the error reaches the caller
    emu.inject("token", Fault(status=400, times=None))
    with pytest.raises(TokenError) as failed:
        clocked().acquire_token(VAULT)
    assert failed.value.status == 400
    emu.clear_faults()


def test_windows_without_an_absolute_local_app_data_keeps_tokens_in_the_process(
        monkeypatch, caplog, tmp_path):
    """The Windows token file lives under %LOCALAPPDATA%; without an absolute one there is
    no shared cache (one WARNING for the process), and nothing is written anywhere."""
    from msicert import Identity
    from msicert._lazylog import _warned
    from msicert.backends.windows import _token_file

    _warned.discard(("LOCALAPPDATA", "LOCALAPPDATA is not set to an absolute path: tokens "
                                     "stay in this process"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a relative path would have put it
    with caplog.at_level(logging.WARNING, logger="msicert"):
        for value in (None, "", "relative\\AppData\\Local"):
            if value is None:
                monkeypatch.delenv("LOCALAPPDATA", raising=False)
            else:
                monkeypatch.setenv("LOCALAPPDATA", value)
            assert _token_file.token_path("current-user", Identity()) is None
            assert _token_file.read("current-user", Identity()) is None
            assert _token_file.write("current-user", Identity(), b"{}") is False
    warned = [r.getMessage() for r in caplog.records if "LOCALAPPDATA" in r.getMessage()]
    assert warned == ["LOCALAPPDATA is not set to an absolute path: tokens stay in this process"]
    assert list(cwd.iterdir()) == []
