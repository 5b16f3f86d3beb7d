"""The CLI people enjoy: probe, status --all, conventions (--version, -v/-q anywhere, --json
errors, --raw, --scope), feedback on waits, emulator option refusals, lifecycle."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3

import msicert
from msicert import ManagedIdentityClient
from msicert._cli_status import bar, duration
from msicert._identity import Identity
from msicert.backends.posix._file_store import FileStore
from msicert.emulator import Fault, decode_token_payload
from tests.conftest import ROOT, cli_env, cli_json, run_cli

UAMI = "55555555-2222-3333-4444-555555555555"
DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port
HINT = "not on Azure? try `msicert emulator`"


# --- 3. probe --------------------------------------------------------------------------------
class _V1OnlyImds(BaseHTTPRequestHandler):
    """A host with IMDS v1 only: no getplatformmetadata (404); the v1 token path refuses a
    request without Metadata: true (400), as MSAL.NET's probe expects."""

    def do_GET(self):
        self.server.paths.append((self.path, self.headers.get("Metadata")))
        status = 400 if self.path.startswith("/metadata/identity/oauth2/token") else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def v1_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _V1OnlyImds)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_probe_finds_imds_v2_with_one_request_without_metadata_header(emu):
    result = msicert.probe(emu.imds_url)
    assert (result.source, result.imds_v2_reason, result.imds_v1_reason) == ("imds_v2", None,
                                                                             None)
    assert emu.count("getplatformmetadata") == 1 and emu.count("issuecredential") == 0
    (req,) = emu.requests
    assert "Metadata" not in req.headers and req.query == {"cred-api-version": "2.0"}


def test_probe_falls_back_to_imds_v1(v1_host):
    result = msicert.probe(f"http://127.0.0.1:{v1_host.server_port}")
    assert result.source == "imds_v1" and result.imds_v1_reason is None
    assert "HTTP 404" in result.imds_v2_reason and not result.unreachable
    assert [p for p, _ in v1_host.paths] == [
        "/metadata/identity/getplatformmetadata?cred-api-version=2.0",
        "/metadata/identity/oauth2/token?api-version=2018-02-01"]
    assert all(meta is None for _, meta in v1_host.paths)


def test_probe_reports_none_when_imds_is_unreachable():
    result = msicert.probe(DEAD)
    assert result.source == "none" and result.unreachable
    assert "unreachable (connection failed" in result.imds_v2_reason
    assert "unreachable (connection failed" in result.imds_v1_reason


def test_probe_answers_within_its_timeout_when_imds_never_answers():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    try:
        result = msicert.probe(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
    finally:
        silent.close()
    assert result.source == "none"
    assert "timed out" in result.imds_v2_reason
    assert result.elapsed < 1.0  # the whole probe, both versions, inside ~timeout


def test_probe_command_exit_codes_json_and_hint(emu):
    ok = run_cli("probe", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["source"] == "imds_v2"
    down = run_cli("probe", "--imds-endpoint", DEAD)
    assert down.returncode == 1
    assert down.stdout.startswith("source  none")
    assert down.stderr.count(HINT) == 1


# --- 4. emulator options ---------------------------------------------------------------------
@pytest.mark.parametrize("module", [["msicert", "emulator"], ["msicert.emulator"]])
def test_emulator_refuses_bad_options_with_one_line_and_exit_2(module):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = {
        ("--port", str(busy.getsockname()[1])): "is busy",
        ("--host", "no-such-host.invalid"): "cannot be resolved",
        ("--lifetime", "-5"): "positive",
        ("--lifetime", "30"): "not longer than the backdate 60",
    }
    try:
        for args, words in cases.items():
            proc = subprocess.run([sys.executable, "-m", *module, *args], capture_output=True,
                                  text=True, env=cli_env(), cwd=str(ROOT), timeout=30)
            assert proc.returncode == 2, (args, proc.stderr)
            assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr and proc.stdout == ""
    finally:
        busy.close()


def test_control_api_serves_the_request_log_without_tokens(make_client, emu):
    client = make_client()
    client.request("GET", f"{emu.ests_url}/resource", resource="https://vault.azure.net")
    log = urllib3.request("GET", f"{emu.imds_url}/__emulator__/requests").json()["requests"]
    assert [r["endpoint"] for r in log] == ["getplatformmetadata", "issuecredential", "token",
                                            "resource"]
    assert log[-1]["headers"]["Authorization"] == "<redacted>"


# --- 5. waits ----------------------------------------------------------------------------------
def test_a_wait_for_another_process_mint_is_one_info_line_on_stderr(emu, store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    lock = store.lock(Identity(), timeout=30)
    with lock.hold():  # this process "mints"; the CLI must wait for it
        proc = subprocess.Popen([sys.executable, "-m", "msicert", "cert", "--json",
                                 "--store-dir", store_dir], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=str(ROOT))
        time.sleep(1.0)  # let it reach the lock (not a timing assertion)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["source"] == "imds"  # it minted once the lock was free
    lines = err.splitlines()
    assert len(lines) == 1 and "waiting for another process to finish minting" in lines[0]
    assert "up to" in lines[0] and store_dir in lines[0]
    fast = run_cli("cert", "--store-dir", store_dir)
    assert fast.returncode == 0 and fast.stderr == ""  # nothing on the fast path


def test_quiet_silences_wait_lines(emu, store_dir):
    store = FileStore(store_dir)
    store.ensure_directory()
    with store.lock(Identity(), timeout=30).hold():
        proc = subprocess.Popen([sys.executable, "-m", "msicert", "cert", "--store-dir",
                                 store_dir, "-q"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=str(ROOT))
        time.sleep(1.0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == ""


def test_each_imds_retry_is_one_stderr_line_by_default_and_quiet_silences_them(emu, store_dir):
    emu.inject("issuecredential", Fault(status=503, times=2))
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert [re.sub(r"\(correlation_id=.*\)", "", line) for line in lines] == [
        "msicert: IMDS issuecredential answered 503; retry 1/3 in 0.0 s ",
        "msicert: IMDS issuecredential answered 503; retry 2/3 in 0.0 s ",
    ]
    emu.reset()
    emu.inject("issuecredential", Fault(status=503, times=2))
    quiet = run_cli("cert", "--store-dir", store_dir + "-q", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_timeout_maps_to_the_deadline(emu, store_dir):
    emu.inject("getplatformmetadata", Fault(status=503, retry_after=30, times=None))
    proc = run_cli("cert", "--store-dir", store_dir, "--timeout", "0.5", "--json",
                   env={"MSICERT_IMDS_RETRY_SCALE": "1"})
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert "deadline" in doc["error"] and doc["step"] == "getplatformmetadata"
    assert emu.count("getplatformmetadata") == 1  # a 30 s Retry-After does not fit in 0.5 s


# --- 6. status -----------------------------------------------------------------------------------
def test_duration_and_bar_render_the_lifetime():
    assert duration(2 * 86400 + 4 * 3600 + 59) == "2d 04h"
    assert duration(3600 + 5 * 60) == "1h 05m"
    assert duration(62.4) == "1m 02s" and duration(41.6) == "42s" and duration(-3) == "0s"
    assert bar(0, 50, 100, 0) == "░" * 9 + "│" + "░" * 8
    assert bar(0, 50, 100, 25) == "████▌" + "░" * 4 + "│" + "░" * 8
    assert bar(0, 50, 100, 100) == "█" * 18


def test_status_all_lists_every_identity_with_a_lifetime_bar(emu, store_dir):
    cli_json("cert", "--store-dir", store_dir)
    cli_json("cert", "--client-id", UAMI, "--store-dir", store_dir)
    bad = Path(store_dir, "msal_mtls.object_id-66666666-2222-3333-4444-555555555555.pem")
    bad.write_bytes(b"garbage")
    bad.chmod(0o600)
    emu.reset()
    proc = run_cli("status", "--all", "--store-dir", store_dir)
    assert proc.returncode == 1  # one entry is corrupt
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    by_name = {line.split()[0]: line for line in lines}
    assert re.fullmatch(r"system\s+ +[█▌░│]{18}  renews in \d+m \d\ds, expires in \d+m \d\ds"
                        r"  \(fresh\)", by_name["system"]), by_name["system"]
    assert by_name[f"client_id={UAMI}"].endswith("(fresh)")
    bad_row = by_name["object_id=66666666-2222-3333-4444-555555555555"]
    assert bad_row.endswith("corrupt: not an msicert entry (missing header)"), bad_row
    as_json = run_cli("status", "--all", "--store-dir", store_dir, "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["store"] == store_dir
    assert {r["state"] for r in doc["identities"]} == {"fresh", "corrupt"}
    fresh = next(r for r in doc["identities"] if r["identity"] == "system")
    assert set(fresh) == {"identity", "state", "reason", "x5t_s256", "not_before",
                          "renew_after", "not_after", "renews_in_seconds",
                          "expires_in_seconds", "client_id", "store", "tokens_cached"}
    assert fresh["tokens_cached"] == 0  # `cert` fetches no token
    assert isinstance(fresh["expires_in_seconds"], int)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fresh[k])
               for k in ("not_before", "renew_after", "not_after"))  # whole seconds
    assert emu.count("getplatformmetadata") == 0


def test_status_never_creates_the_store_directory(tmp_path):
    missing = tmp_path / "nowhere" / "certs"
    for args in (["status"], ["status", "--all"], ["status", "--json"]):
        proc = run_cli(*args, "--store-dir", str(missing))
        assert proc.returncode == 1
    assert not missing.parent.exists()
    assert json.loads(run_cli("status", "--all", "--json", "--store-dir", str(missing)).stdout
                      )["identities"] == []


def test_status_of_a_renewing_entry_says_renewing(emu, store_dir):
    emu.lifetime, emu.backdate = 3600.0, 3000.0  # past renew_after when issued
    cli_json("cert", "--store-dir", store_dir)
    proc = run_cli("status", "--all", "--store-dir", store_dir)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("(renewing)")
    assert "renewal due" in proc.stdout


# --- 7. conventions ------------------------------------------------------------------------------
def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"msicert {msicert.__version__}"


def test_verbose_and_quiet_are_accepted_after_the_subcommand(emu, store_dir):
    loud = run_cli("cert", "--store-dir", store_dir, "-v")
    assert loud.returncode == 0 and "minted certificate" in loud.stderr
    quiet = run_cli("purge", "--store-dir", store_dir, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_json_errors_carry_error_step_status_and_correlation_id(emu, store_dir):
    emu.inject("issuecredential", Fault(status=403))
    proc = run_cli("cert", "--store-dir", store_dir, "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["step"] == "issuecredential" and doc["status"] == 403
    assert doc["correlation_id"] == emu.requests[-1].headers["x-ms-client-request-id"]
    assert "HTTP 403" in doc["error"]
    assert "correlation_id" not in doc["error"] and doc["correlation_id"] not in doc["error"]
    assert proc.stderr.count(doc["correlation_id"]) == 1  # the terminal line ends with it
    usage = run_cli("token", "--json")  # --resource is missing: argparse's own error
    assert usage.returncode == 2 and "--resource" in json.loads(usage.stdout)["error"]
    bad = run_cli("cert", "--client-id", "nope", "--json")
    assert bad.returncode == 2 and "GUID" in json.loads(bad.stdout)["error"]


def test_unreachable_imds_is_said_once_with_the_emulator_hint(store_dir):
    proc = run_cli("cert", "--store-dir", store_dir,
                   env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": DEAD})
    assert proc.returncode == 1
    assert proc.stderr.count("getplatformmetadata") == 1, proc.stderr
    assert "step=" not in proc.stderr and proc.stderr.count(HINT) == 1
    doc = json.loads(run_cli("cert", "--json", "--store-dir", store_dir,
                             env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": DEAD}).stdout)
    assert doc["status"] is None and doc["step"] == "getplatformmetadata"
    assert doc["correlation_id"] and HINT in doc["error"]


def test_client_error_for_unreachable_imds_carries_the_hint(store_dir):
    client = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=DEAD)
    with pytest.raises(msicert.ImdsError, match="try `msicert emulator`"):
        client.get_certificate()


def test_token_raw_prints_the_bare_token_and_scope_is_an_alias(emu, store_dir):
    proc = run_cli("token", "--scope", "https://vault.azure.net/.default", "--raw",
                   "--store-dir", store_dir)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert proc.stdout == token + "\n" and token.count(".") == 2
    assert decode_token_payload(token)["aud"].startswith("https://vault.azure.net")
    scope = next(r for r in emu.requests if r.endpoint == "token").body.decode()
    assert "scope=https%3A%2F%2Fvault.azure.net%2F.default" in scope
    plain = cli_json("token", "--scope", "https://vault.azure.net", "--store-dir", store_dir)
    assert plain["token_type"] == "mtls_pop"


def test_a_wrong_expected_issuer_explains_itself_and_keeps_the_entry(emu, store_dir):
    good = cli_json("cert", "--store-dir", store_dir)
    entry = Path(store_dir, "msal_mtls.pem")
    before = entry.read_bytes()
    proc = run_cli("cert", "--store-dir", store_dir, env={"MSICERT_ISSUER": "wrong.example"})
    assert proc.returncode == 1
    assert "expected 'wrong.example'" in proc.stderr
    assert "issuer is 'CN=managedidentitysnissuer.login.microsoft.com'" in proc.stderr
    assert entry.read_bytes() == before
    assert cli_json("status", "--store-dir", store_dir)["x5t_s256"] == good["x5t_s256"]


# --- 8. lifecycle --------------------------------------------------------------------------------
def test_client_is_a_context_manager_that_closes_pools_and_drops_contexts(make_client, emu):
    with make_client() as client:
        client.request("GET", f"{emu.ests_url}/resource", resource="https://vault.azure.net")
        ctx = client.ssl_context()
        _, mtls_pool = client._mtls_pool()
        imds_pool = client._imds_client._pool
        assert len(mtls_pool.pools) == 1 and len(imds_pool.pools) == 1
    assert len(mtls_pool.pools) == 0 and len(imds_pool.pools) == 0
    assert client._token_manager is None and client._imds_client is None
    assert client.ssl_context() is not ctx  # a later call reopens what it needs
    client.close()
    client.close()  # idempotent
