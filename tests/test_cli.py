"""The command line: exact interfaces, human output, failures that name the step and status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from msicert.emulator import Fault
from tests.conftest import ROOT, cli_env, cli_json, run_cli

UAMI = "55555555-2222-3333-4444-555555555555"


def test_http_failure_names_the_step_and_status(emu, store_dir):
    emu.inject("issuecredential", Fault(status=403, times=None))
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 1
    assert "issuecredential" in proc.stderr and "HTTP 403" in proc.stderr
    assert proc.stdout == ""
    assert emu.count("issuecredential") == 1  # 403 is never retried


def test_unreachable_imds_is_a_clear_transport_error(store_dir, tmp_path):
    proc = run_cli("cert", "--store-dir", store_dir,
                   env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    assert "getplatformmetadata failed" in proc.stderr
    assert "NewConnectionError" in proc.stderr or "MaxRetryError" in proc.stderr


def test_msi_v2_unavailable_is_named(emu, store_dir):
    emu.inject("getplatformmetadata", Fault(status=404, times=None))
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 1
    assert "MSI v2 not available" in proc.stderr and "HTTP 404" in proc.stderr


def test_human_output_without_json(emu, store_dir):
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 0, proc.stderr
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in
                 proc.stdout.strip().splitlines())
    assert lines["source"] == "imds"
    assert lines["issuer"] == "CN=managedidentitysnissuer.login.microsoft.com"


def test_status_makes_no_network_call_and_reports_state(emu, store_dir):
    proc = run_cli("status", "--store-dir", store_dir, "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["state"] == "absent"
    cert = cli_json("cert", "--store-dir", store_dir)
    emu.reset()
    st = cli_json("status", "--store-dir", store_dir)
    assert st["state"] == "fresh" and st["x5t_s256"] == cert["x5t_s256"]
    assert st["source"] == "store"
    assert emu.count("getplatformmetadata") == emu.count("issuecredential") == 0


def test_status_reports_a_corrupt_entry(store_dir):
    os.makedirs(store_dir, mode=0o700)
    Path(store_dir, "msal_mtls.pem").write_bytes(b"garbage")
    os.chmod(Path(store_dir, "msal_mtls.pem"), 0o600)
    proc = run_cli("status", "--store-dir", store_dir, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["state"] == "corrupt"


def test_purge_removes_only_the_selected_identity_and_lists_what_went(emu, store_dir):
    cli_json("cert", "--store-dir", store_dir)
    uami = cli_json("cert", "--client-id", UAMI, "--store-dir", store_dir)
    proc = run_cli("purge", "--client-id", UAMI, "--store-dir", store_dir)
    assert proc.returncode == 0 and "removed 1 entry" in proc.stdout
    assert proc.stdout.splitlines()[1:] == [f"  {uami['x5t_s256']}"]
    assert sorted(n for n in os.listdir(store_dir) if n.endswith(".pem")) == ["msal_mtls.pem"]
    assert run_cli("purge", "--client-id", UAMI, "--store-dir", store_dir).stdout.startswith(
        "removed 0 entries")
    again = cli_json("cert", "--client-id", UAMI, "--store-dir", store_dir)
    out = cli_json("purge", "--client-id", UAMI, "--store-dir", store_dir)
    assert out["removed"] == 1 and out["entries"] == [again["x5t_s256"]]


def test_identity_flags_are_mutually_exclusive_and_validated(store_dir):
    both = run_cli("cert", "--client-id", UAMI, "--object-id", UAMI, "--store-dir", store_dir)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    bad = run_cli("cert", "--client-id", "nope", "--store-dir", store_dir)
    assert bad.returncode == 2 and "client_id must be a GUID" in bad.stderr


def test_resource_id_selector_goes_out_as_mi_res_id(emu, store_dir):
    arm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/" \
          "userAssignedIdentities/u"
    cli_json("cert", "--resource-id", arm, "--store-dir", store_dir)
    assert all(r.query.get("mi_res_id") == arm for r in emu.requests)
    assert emu.violations == []


def test_default_store_is_under_home_config(emu):
    out = cli_json("cert")
    assert out["store"] == os.path.join(os.environ["HOME"], ".config", "msal", "certs",
                                        "msal_mtls.pem")


def test_emulator_exports_leave_the_real_store_and_shell_trust_alone(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "msicert", "emulator", "--lifetime", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=str(ROOT))
    try:
        exports: dict[str, str] = {}
        deadline = time.time() + 20
        while len(exports) < 3 and time.time() < deadline:
            line = proc.stdout.readline()
            m = re.match(r"export (\w+)=(\S+)", line)
            if m:
                exports[m.group(1)] = m.group(2)
        assert set(exports) == {"AZURE_POD_IDENTITY_AUTHORITY_HOST", "MSICERT_CA_BUNDLE",
                                "MSICERT_STORE_DIR"}  # no SSL_CERT_FILE for the whole shell
        out = cli_json("cert", env=exports)  # no --store-dir: MSICERT_STORE_DIR applies
        assert out["source"] == "imds"
        assert out["store"] == os.path.join(exports["MSICERT_STORE_DIR"], "msal_mtls.pem")
        assert not os.path.exists(os.path.join(os.environ["HOME"], ".config"))
        nb = out["not_before"]
        na = out["not_after"]
        from datetime import datetime
        life = (datetime.fromisoformat(na.replace("Z", "+00:00")) -
                datetime.fromisoformat(nb.replace("Z", "+00:00"))).total_seconds()
        assert life == 600
        tok = cli_json("token", "--resource", "https://vault.azure.net", env=exports)
        assert tok["x5t_s256"] == out["x5t_s256"]
        st = cli_json("status", env=exports)
        assert st["x5t_s256"] == out["x5t_s256"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert not os.path.exists(exports["MSICERT_STORE_DIR"])  # its store goes with it


def test_readme_gives_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- (demo|test)-command -->\n```\n(.+?)\n```\n<!-- /\1-command -->",
                        readme, re.S)
    assert [b[0] for b in blocks] == ["demo", "test"]
    assert all("\n" not in cmd for _, cmd in blocks)
    assert "msicert demo" in blocks[0][1] and "pytest" in blocks[1][1]
    # Debian/Ubuntu mark the system Python externally managed: both commands make and use a venv.
    for _, cmd in blocks:
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/python -m pip install")
        assert " python3 -m pip" not in cmd and "&& python3 " not in cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and 'bash -c "$test_cmd"' in ci
