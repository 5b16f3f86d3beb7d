"""Shared fixtures: a real emulator on loopback, isolated HOME/store, CLI subprocess runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = "0.001"  # IMDS retry waits of 1/2/4 s become 1/2/4 ms in tests


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the real HOME, a real IMDS, or another test's settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "MSICERT_ISSUER", "SSL_CERT_DIR",
                 "MSICERT_STORE_DIR", "MSICERT_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MSICERT_IMDS_RETRY_SCALE", FAST_RETRY)


@pytest.fixture(scope="session")
def _emulator_session():
    from msicert.emulator import Emulator

    emu = Emulator(lifetime=3600.0, backdate=60.0)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(_emulator_session, monkeypatch):
    """The session's emulator, reset, with the environment pointing at it."""
    from msicert.emulator._ca import ISSUER_CN

    e = _emulator_session
    e.reset()
    e.lifetime, e.backdate, e.token_lifetime = 3600.0, 60.0, 3600.0
    e.issuer_cn = ISSUER_CN  # the Azure public cloud's issuer name
    for k, v in e.env().items():
        if k != "MSICERT_STORE_DIR":  # tests pick their store (store_dir fixture, or HOME)
            monkeypatch.setenv(k, v)
    yield e
    e.clear_faults()


@pytest.fixture
def cold_azure_resources(emu):
    """An Azure SDK test starts cold: no cached Key Vault challenge, an empty vault and
    account (and leaves no challenge cached behind it)."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()
    emu.resources.vault.clear()
    emu.resources.account.clear()
    yield
    http_challenge_cache.clear()


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store" / "certs")


@pytest.fixture
def make_client(emu, store_dir):
    from msicert import Backoff, ManagedIdentityClient

    def make(**kw):
        if "store" not in kw:  # a Store object and store_dir together is refused
            kw.setdefault("store_dir", store_dir)
        kw.setdefault("imds_endpoint", emu.imds_url)
        kw.setdefault("mint_backoff", Backoff(0.0, 0.0))
        return ManagedIdentityClient(**kw)

    return make


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
    """``python -m msicert ARGS`` in a fresh process (the same code the console script runs)."""
    return subprocess.run([sys.executable, "-m", "msicert", *args], capture_output=True,
                          text=True, env=cli_env(env), timeout=timeout, cwd=str(ROOT))


def cli_json(*args: str, **kw) -> dict:
    proc = run_cli(*args, "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
