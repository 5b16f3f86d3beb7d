"""Configuration values that make no sense are ignored with a warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from msicert import Backoff, Identity
from msicert.backends.posix._file_store import default_directory
from msicert.emulator import Fault
from msicert.wire._imds import ImdsClient
from msicert.wire._retry import RetryPolicy
from tests.conftest import ROOT, cli_env


@pytest.mark.parametrize("raw", ["-1", "-0.5", "nan", "inf", "-inf", "1e999"])
def test_unusable_retry_scale_is_ignored_with_a_warning_and_the_real_waits_apply(
        emu, monkeypatch, caplog, raw):
    monkeypatch.setenv("MSICERT_IMDS_RETRY_SCALE", raw)
    waits: list[float] = []
    emu.inject("getplatformmetadata", Fault(status=503))
    with caplog.at_level(logging.WARNING, logger="msicert"):
        client = ImdsClient(emu.imds_url, sleep=waits.append)
        client.get_platform_metadata(Identity())
    assert client.retry.scale == 1.0
    assert waits == [1.0]  # the protocol's first retry wait, unscaled
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "ignoring MSICERT_IMDS_RETRY_SCALE" in warnings[0] and "finite number >= 0" in \
        warnings[0]


@pytest.mark.parametrize(("raw", "scale"), [("0", 0.0), ("0.001", 0.001), ("2", 2.0)])
def test_usable_retry_scale_is_applied_silently(monkeypatch, caplog, raw, scale):
    monkeypatch.setenv("MSICERT_IMDS_RETRY_SCALE", raw)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        assert RetryPolicy.from_env().scale == scale
    assert not caplog.records


def test_cli_with_a_nan_retry_scale_retries_and_succeeds(emu, store_dir):
    # Before: time.sleep(nan) raised ValueError out of the retry loop.
    emu.inject("getplatformmetadata", Fault(status=503))
    proc = subprocess.run(
        [sys.executable, "-m", "msicert", "cert", "--json", "--store-dir", store_dir],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT),
        env=cli_env({"MSICERT_IMDS_RETRY_SCALE": "nan"}))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == "imds"
    assert "ignoring MSICERT_IMDS_RETRY_SCALE='nan'" in proc.stderr
    assert emu.count("getplatformmetadata") == 2


@pytest.mark.parametrize("raw", ["relative/config", ".", "~/cfg"])
def test_relative_xdg_config_home_is_ignored_with_a_warning(monkeypatch, tmp_path, caplog, raw):
    monkeypatch.setenv("XDG_CONFIG_HOME", raw)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        where = default_directory()
    assert where == str(tmp_path / "home" / ".config" / "msal" / "certs")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "ignoring XDG_CONFIG_HOME" in warnings[0]
    assert "not an absolute path" in warnings[0]


def test_absolute_xdg_config_home_is_used_silently(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with caplog.at_level(logging.WARNING, logger="msicert"):
        assert default_directory() == str(tmp_path / "xdg" / "msal" / "certs")
    assert not caplog.records


def test_cli_with_a_relative_xdg_config_home_stores_under_home_not_the_working_directory(
        emu, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "msicert", "cert", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=str(work),
                          env=cli_env({"XDG_CONFIG_HOME": "relcfg"}))
    assert proc.returncode == 0, proc.stderr
    assert "ignoring XDG_CONFIG_HOME='relcfg'" in proc.stderr
    assert os.listdir(work) == []
    home_entry = tmp_path / "home" / ".config" / "msal" / "certs" / "msal_mtls.pem"
    assert home_entry.exists()


@pytest.mark.parametrize(("option", "value"), [
    ("lock_timeout", float("nan")), ("renewal_deadline", float("inf")),
    ("lock_timeout", -1.0), ("renewal_deadline", 0.0), ("remediation_timeout", float("nan")),
    ("remediation_timeout", 0.0),
])
def test_client_refuses_durations_that_would_disable_their_bound(store_dir, option, value):
    from msicert import ManagedIdentityClient

    with pytest.raises(ValueError, match=f"{option} must be a finite number of seconds"):
        ManagedIdentityClient(store_dir=store_dir, **{option: value})


def test_client_accepts_a_zero_mint_backoff(store_dir):
    from msicert import ManagedIdentityClient

    ManagedIdentityClient(store_dir=store_dir, mint_backoff=Backoff(0.0, 0.0), lock_timeout=None)


@pytest.mark.parametrize(("initial", "maximum"), [
    (-1.0, 10.0), (float("nan"), 10.0), (1.0, float("inf")), (10.0, 1.0),
])
def test_backoff_refuses_durations_that_would_disable_or_invert_it(initial, maximum):
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(initial, maximum)


def test_client_refuses_a_backoff_that_is_not_a_backoff(store_dir):
    from msicert import ManagedIdentityClient

    with pytest.raises(TypeError, match=r"mint_backoff must be a msicert\.Backoff"):
        ManagedIdentityClient(store_dir=store_dir, mint_backoff=30.0)
