"""``logging`` is imported only when a record could be shown: the warm CLI never pays for it,
and no record that a configuration would show is ever lost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, cli_env, cli_json, run_cli


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (nothing imported yet), with msicert importable."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, env=cli_env(), timeout=60,
                          cwd=str(ROOT))


@pytest.fixture(scope="module")
def bare_interpreter_modules() -> set[str]:
    """What this interpreter imports before any code runs (site, .pth files)."""
    proc = _python("import sys, json; print(json.dumps(sorted(sys.modules)))")
    return set(json.loads(proc.stdout))


def test_warm_cli_cert_imports_neither_logging_nor_shutil(emu, store_dir, bare_interpreter_modules):
    for name in ("logging", "shutil"):
        if name in bare_interpreter_modules:
            pytest.skip(f"this interpreter imports {name} at startup (site or a .pth file)")
    minted = cli_json("cert", "--store-dir", store_dir)
    assert minted["source"] == "imds"
    calls = emu.count("issuecredential")
    proc = _python("""
        import json, sys
        from msicert._cli import main
        rc = main(["cert", "--json", "--store-dir", sys.argv[1]])
        print(json.dumps({"rc": rc, "loaded": [m for m in ("logging", "shutil")
                                               if m in sys.modules]}), file=sys.stderr)
    """, store_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == "store"
    assert json.loads(proc.stderr) == {"rc": 0, "loaded": []}
    assert emu.count("issuecredential") == calls


def test_warm_cli_shows_the_store_hit_only_under_vv(emu, store_dir):
    cli_json("cert", "--store-dir", store_dir)
    quiet_by_default = run_cli("cert", "--store-dir", store_dir)
    assert quiet_by_default.returncode == 0 and quiet_by_default.stderr == ""
    verbose = run_cli("cert", "--store-dir", store_dir, "-v")
    assert verbose.returncode == 0 and "using stored certificate" not in verbose.stderr
    debug = run_cli("cert", "--store-dir", store_dir, "-vv")
    assert debug.returncode == 0
    assert debug.stderr.count("using stored certificate") == 1, debug.stderr
    assert " msicert DEBUG " in debug.stderr


def test_records_below_what_anything_could_show_do_not_import_logging():
    proc = _python("""
        import sys
        from msicert._lazylog import LazyLogger
        log = LazyLogger("msicert.test")
        log.debug("debug-1")
        log.info("info-1")
        print("logging" in sys.modules, file=sys.stderr)
        log.warning("warning-1")  # an unconfigured logging shows it (its last resort)
        print("logging" in sys.modules, file=sys.stderr)
    """)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["False", "warning-1", "True"]


def test_a_configuration_made_before_the_first_record_sees_debug_records():
    proc = _python("""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")
        from msicert._lazylog import LazyLogger
        LazyLogger("msicert").debug("debug-1")
    """)
    assert proc.stderr.splitlines() == ["DEBUG debug-1"]


def test_a_first_use_hook_runs_once_before_the_first_record_it_can_show():
    proc = _python("""
        import sys, threading, time
        from msicert import _lazylog
        runs = []

        def hook():
            import logging
            runs.append(1)
            time.sleep(0.2)  # a second thread's first record must wait for the handler
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            logging.getLogger("msicert").addHandler(handler)
            logging.getLogger("msicert").setLevel(logging.INFO)

        _lazylog.on_first_use(hook, level=20)
        a, b = _lazylog.LazyLogger("msicert"), _lazylog.LazyLogger("msicert.other")
        a.debug("debug-dropped")  # below the hook's level: no import, no hook
        print("after debug", "logging" in sys.modules, len(runs), flush=True)
        threads = [threading.Thread(target=log.info, args=(f"info-{i}",))
                   for i, log in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        late = []
        _lazylog.on_first_use(lambda: late.append(1))  # after activation: runs at once
        print("runs", len(runs), "late", len(late), flush=True)
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "after debug False 0"
    assert sorted(lines[1:3]) == ["INFO info-0", "INFO info-1"]
    assert lines[3:] == ["runs 1 late 1"]


def test_verbose_cli_shows_records_of_plain_logging_loggers_before_any_of_its_own(tmp_path):
    """msicert_native (below msicert) logs through ``logging.getLogger("msicert")`` directly:
    with -v the handler is there before msicert's own first record."""
    proc = _python("""
        import logging, sys
        from msicert._cli import main
        rc = main(["status", "--store-dir", sys.argv[1], "-vv"])  # logs nothing of its own
        logging.getLogger("msicert").debug("a plain-logging record")
        print(rc, file=sys.stderr)
    """, str(tmp_path / "absent"))
    lines = proc.stderr.splitlines()
    assert lines[-1] == "1"  # status of an absent identity
    assert any(line.endswith("msicert DEBUG a plain-logging record") for line in lines), lines


_HELP = """
    import argparse, contextlib, io, sys
    from msicert import _cli
    if sys.argv[1] == "stock":
        _cli._Formatter = argparse.HelpFormatter  # argparse's own width (via shutil)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        _cli.main(["cert", "--help"])
    print(out.getvalue(), end="")
    print("shutil" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("columns", ["50", "120", None, "junk"])
def test_help_is_laid_out_exactly_as_stock_argparse_without_importing_shutil(columns, monkeypatch):
    """argparse's width comes from $COLUMNS, else the terminal, else 80 (stdout is a pipe
    here), as ``shutil.get_terminal_size`` gives it: the help text is byte for byte argparse's
    own, and shutil is never imported."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    ours, stock = _python(_HELP, "ours"), _python(_HELP, "stock")
    assert ours.returncode == stock.returncode == 0, (ours.stderr, stock.stderr)
    assert ours.stdout == stock.stdout
    assert "--client-id" in ours.stdout
    assert (ours.stderr, stock.stderr) == ("False\n", "True\n")
