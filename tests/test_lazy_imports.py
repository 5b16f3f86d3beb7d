"""What a warm CLI call loads: the status rendering only for ``status`` and ``purge``; on a
token served from the shared cache, neither TLS nor urllib3, nor the resource call, nor the
reading of a failed attempt. Each command runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, cli_env, cli_json

_LOADED = """
    import json, sys
    from msicert._cli import main
    rc = main(sys.argv[2:])
    print(json.dumps({"rc": rc, "loaded": sorted(m for m in json.loads(sys.argv[1])
                                                 if m in sys.modules)}), file=sys.stderr)
"""


def _bare_interpreter_modules() -> set[str]:
    """What this interpreter imports before any code runs (site, .pth files)."""
    proc = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps(sorted("
                           "sys.modules)))"], capture_output=True, text=True, env=cli_env(),
                          timeout=60, cwd=str(ROOT))
    return set(json.loads(proc.stdout))


def _loaded(watched: list[str], *argv: str) -> tuple[dict, dict]:
    """Run ``msicert ARGV`` in a fresh interpreter: (its JSON output, {rc, which of
    ``watched`` it loaded})."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_LOADED), json.dumps(watched),
                           *argv, "--json"], capture_output=True, text=True, env=cli_env(),
                          timeout=60, cwd=str(ROOT))
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout), json.loads(proc.stderr.splitlines()[-1])


def test_only_status_and_purge_load_the_status_rendering(emu, store_dir):
    assert cli_json("cert", "--store-dir", store_dir)["source"] == "imds"
    calls = emu.count("issuecredential")
    watched = ["msicert._cli_status"]
    out, seen = _loaded(watched, "cert", "--store-dir", store_dir)
    assert out["source"] == "store" and seen == {"rc": 0, "loaded": []}
    out, seen = _loaded(watched, "status", "--store-dir", store_dir)
    assert out["state"] == "fresh" and seen == {"rc": 0, "loaded": watched}
    out, seen = _loaded(watched, "purge", "--store-dir", store_dir)
    assert out["removed"] == 1 and seen == {"rc": 0, "loaded": watched}
    assert emu.count("issuecredential") == calls


def test_a_token_from_the_shared_cache_loads_no_tls_and_no_failure_handling(emu, store_dir):
    resource = "https://vault.azure.net"
    first = cli_json("token", "--resource", resource, "--store-dir", store_dir)
    assert first["source"] == "identity_provider"
    calls = emu.count("token")
    bare = _bare_interpreter_modules()  # a .pth file may load ssl itself: not ours to judge
    watched = [m for m in ("msicert._resource_call", "msicert._transport_failure", "ssl",
                           "urllib3") if m not in bare]
    assert "msicert._transport_failure" in watched
    out, seen = _loaded(watched, "token", "--resource", resource, "--store-dir", store_dir)
    assert out["source"] == "shared_cache" and out["access_token"] == first["access_token"]
    assert seen == {"rc": 0, "loaded": []}
    assert emu.count("token") == calls
