"""Every bad input and every broken environment the command line meets is one line on stderr
and the right exit code, never a traceback or a hang (real ``python -m msicert`` processes).

Unreadable files: as root a mode of 000 does not bind, so there the command runs as the
unprivileged user ``nobody`` (it drops root after importing what it needs, then runs exactly
what ``python -m msicert`` runs), over a store that user owns.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, run_cli

NOBODY = 65534
UAMI = "66666666-2222-3333-4444-555555555555"

# Runs ``python -m msicert ARGS`` as NOBODY: the interpreter's own files may not be readable
# by that user, so what the command needs is imported first, while still root.
_AS_NOBODY = textwrap.dedent(f"""
    import os, runpy, sys
    for name in ("msicert", "msicert._cli", "msicert._client", "msicert._identity",
                 "msicert._errors", "msicert._model", "msicert._policy", "msicert._version",
                 "msicert._timeouts", "msicert.backends", "msicert.backends.contract",
                 "msicert.backends.posix", "msicert.backends.posix._file_store",
                 "msicert.backends.posix._flock", "argparse", "json", "logging", "re",
                 "stat", "contextlib", "gettext", "locale", "encodings.idna"):
        __import__(name)
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
    sys.argv = ["msicert", *sys.argv[1:]]
    runpy.run_module("msicert", run_name="__main__", alter_sys=True)
""")


def _run_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m msicert ARGS`` as a user a mode of 000 binds (NOBODY when we are root)."""
    if os.geteuid() != 0:
        return run_cli(*args)
    return subprocess.run([sys.executable, "-c", _AS_NOBODY, *args], capture_output=True,
                          text=True, env=cli_env({"HOME": "/nonexistent"}), timeout=60,
                          cwd="/")


@pytest.fixture
def own_store(make_client, emu):
    """A store holding two real entries (system and a user-assigned identity) that the user
    of :func:`_run_unprivileged` owns, in a directory that user can reach."""
    base = tempfile.mkdtemp(prefix="msicert-cli-")
    os.chmod(base, 0o711)
    store = os.path.join(base, "certs")
    make_client(store_dir=store).get_certificate()
    make_client(store_dir=store, client_id=UAMI).get_certificate()
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(base):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, NOBODY, NOBODY)
    yield store
    os.chmod(store, 0o700)
    shutil.rmtree(base)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- seconds -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e309", "nan", "-1", "0", "-inf", "soon"])
@pytest.mark.parametrize("command", ["probe", "token", "cert"])
def test_a_timeout_that_is_no_finite_positive_number_is_a_usage_error(command, value):
    extra = ["--resource", "https://vault.azure.net"] if command == "token" else []
    # "-1" is a value to argparse; "-inf" would be an option: it goes after "="
    given = [f"--timeout={value}"] if value == "-inf" else ["--timeout", value]
    proc = run_cli(command, *extra, *given,
                   env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "not on Azure" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"msicert {command}: error: argument --timeout: {value!r}")
    assert proc.stderr.startswith("usage: msicert ")  # argparse's usage, then the one error
    assert proc.stdout == ""


def test_a_bad_timeout_under_json_is_a_json_usage_error():
    proc = run_cli("probe", "--timeout", "1e309", "--json")
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert out["type"] == "UsageError" and "--timeout" in out["error"]
    assert "Traceback" not in proc.stderr


# --- status --all over an unusable store --------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_status_all_on_an_unreadable_directory_is_one_line_and_exit_1(own_store):
    os.chmod(own_store, 0o000)
    proc = _run_unprivileged("status", "--all", "--store-dir", own_store)
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert line == f"msicert status: StoreError: cannot list store directory {own_store}: " \
                   "Permission denied"
    assert proc.stdout == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_one_unreadable_entry_does_not_hide_the_others(own_store):
    locked = os.path.join(own_store, f"msal_mtls.client_id-{UAMI}.pem")
    os.chmod(locked, 0o000)
    proc = _run_unprivileged("status", "--all", "--store-dir", own_store)
    assert proc.returncode == 1, proc.stderr  # not every identity is usable
    assert "Traceback" not in proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 2, proc.stdout
    assert rows[0].startswith(f"client_id={UAMI}  unreadable: cannot open store entry {locked}")
    assert "Permission denied" in rows[0]
    assert rows[1].startswith("system  ") and rows[1].endswith("(fresh)")
    as_json = json.loads(_run_unprivileged("status", "--all", "--json", "--store-dir",
                                           own_store).stdout)
    assert [r["state"] for r in as_json["identities"]] == ["unreadable", "fresh"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_status_all_lists_a_fifo_named_like_an_entry_without_waiting_on_it(own_store):
    guid = str(uuid.uuid4())
    fifo = os.path.join(own_store, f"msal_mtls.client_id-{guid}.pem")
    os.mkfifo(fifo, 0o600)
    if os.geteuid() == 0:
        os.chown(fifo, NOBODY, NOBODY)
    started = time.monotonic()
    proc = _run_unprivileged("status", "--all", "--store-dir", own_store)
    assert time.monotonic() - started < 20  # nobody writes to the FIFO: a blocking open hangs
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 3, proc.stdout
    assert f"client_id={guid}  corrupt: entry is not a regular file" in rows
    assert rows[-1].startswith("system  ") and rows[-1].endswith("(fresh)")
    assert Path(fifo).exists()  # status changes nothing


def _fifo_store(tmp_path, count: int) -> str:
    """A store whose listing is ``count`` rows (FIFOs named like entries): over 64 KiB."""
    store = tmp_path / "many"
    store.mkdir(mode=0o700)
    for _ in range(count):
        os.mkfifo(store / f"msal_mtls.client_id-{uuid.uuid4()}.pem", 0o600)
    return str(store)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("when", ["before-any-output", "after-one-byte"])
def test_a_closed_output_pipe_is_exit_141_and_one_line(tmp_path, when):
    store = _fifo_store(tmp_path, 1000)
    proc = subprocess.Popen([sys.executable, "-m", "msicert", "status", "--all", "--store-dir",
                             store], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(), cwd=str(ROOT))
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if when == "after-one-byte":  # `msicert status --all | head -c 1`
            assert select.select([proc.stdout], [], [], 30)[0], "no output in 30 s"
            assert len(proc.stdout.read(1)) == 1
        proc.stdout.close()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 141
    assert _one_line(stderr) == ("msicert status: output closed before it was all written "
                                 "(broken pipe)")


def test_the_listing_the_pipe_test_closes_is_over_64_kib(tmp_path):
    proc = run_cli("status", "--all", "--store-dir", _fifo_store(tmp_path, 1000))
    assert len(proc.stdout.encode()) > 64 * 1024 and proc.returncode == 1


# --- where the store is -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["status", "cert", "purge", "token"])
def test_an_empty_store_dir_is_a_usage_error_even_with_msicert_store_dir_set(
        emu, tmp_path, command):
    env_store = tmp_path / "env-store"
    extra = ["--resource", "https://vault.azure.net"] if command == "token" else []
    proc = run_cli(command, *extra, "--store-dir", "",
                   env={"MSICERT_STORE_DIR": str(env_store)})
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (
        f"msicert {command}: invalid input: store_dir is empty: give a directory, or leave "
        "it out for the default store ($MSICERT_STORE_DIR, else ~/.config/msal/certs)")
    assert not env_store.exists() and emu.count("getplatformmetadata") == 0


def test_an_empty_store_dir_is_a_value_error_even_with_msicert_store_dir_set(
        emu, tmp_path, monkeypatch):
    from msicert import ManagedIdentityClient

    monkeypatch.setenv("MSICERT_STORE_DIR", str(tmp_path / "env-store"))
    for empty in ("", "   "):
        with pytest.raises(ValueError, match=r"store_dir is empty"):
            ManagedIdentityClient(store_dir=empty, imds_endpoint=emu.imds_url)
    assert not (tmp_path / "env-store").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="HOME places the POSIX store")
@pytest.mark.parametrize("home", ["relative/home", ".", ""])
def test_a_home_that_is_no_absolute_path_is_a_store_error_naming_home(
        emu, tmp_path, monkeypatch, home):
    from msicert import ManagedIdentityClient, StoreError

    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(StoreError) as info:
        ManagedIdentityClient(imds_endpoint=emu.imds_url)
    assert "HOME" in str(info.value) and repr(home) in str(info.value)
    for command in ("status", "cert"):
        proc = subprocess.run([sys.executable, "-m", "msicert", command], capture_output=True,
                              text=True, env=cli_env({"HOME": home}), timeout=60,
                              cwd=str(cwd))
        assert proc.returncode == 1, proc.stdout
        line = _one_line(proc.stderr)
        assert line.startswith(f"msicert {command}: StoreError: cannot place the default "
                               "store") and "(HOME)" in line
    assert list(cwd.iterdir()) == []  # nothing was written where the process runs
    assert emu.count("getplatformmetadata") == 0
