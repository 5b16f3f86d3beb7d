"""Packaging: sdist and wheel contents, clean-venv installs, no pycparser at run time, frozen CLI.

The ``slow`` tests build the project for real (``python -m build`` in a throwaway venv, from a
copy of the sources), install the wheel and the sdist into clean venvs made with
``python -m venv``, and freeze the CLI with PyInstaller through ``tools/freeze.sh``. They need
the package index that pip is configured for (PyPI) to install ``build``, the build
requirements, the runtime dependencies and PyInstaller. One wheel is built per module run.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IS_WINDOWS = sys.platform == "win32"

# What a build needs from the work tree; the copy keeps the tree itself free of build/ and
# *.egg-info and lets the test plant a stale generated module.
SOURCE_ENTRIES = (
    "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "cdefs", "msicert", "msicert_native",
)
CDEF_FILES = sorted(p.name for p in (ROOT / "cdefs").glob("*.cdef"))
STALE_FFI = 'raise ImportError("stale msicert_native/_ffi.py copied from the work tree")\n'
STALE_SPEC = 'raise ImportError("stale msicert_native/_spec.py copied from the work tree")\n'

# Captured at import, before the suite's autouse fixture points HOME at a temp dir, so that
# pip and PyInstaller keep using their caches.
_BASE_ENV = {
    k: v for k, v in os.environ.items()
    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MSICERT_NATIVE_BACKEND")
}
_BASE_ENV["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

# Run with `python -c` in a fresh interpreter: blocks pycparser, walks the import-time and CLI
# paths, then imports msicert_native; prints one JSON line describing what got loaded.
IMPORT_PROBE = r"""
import contextlib, importlib, importlib.util, io, json, sys

sys.modules["pycparser"] = None  # any `import pycparser` now raises ImportError

def native_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] == "msicert_native")

import msicert
after_import = native_modules()

from msicert import _cli
codes = []
for argv in (["--help"], ["cert", "--help"], ["status", "--help"], ["token", "--help"],
             ["purge", "--help"], ["emulator", "--help"], ["demo", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            codes.append(_cli.main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
for name in ("msicert._client", "msicert._cli_status", "msicert._demo", "msicert._token_cache",
             "msicert._resource_call", "msicert._transport_failure", "msicert.wire._ests",
             "msicert.backends.posix._ssl_transport", "msicert.backends.contract",
             "msicert.emulator"):
    importlib.import_module(name)
after_cli = native_modules()

has_cffi_backend = importlib.util.find_spec("_cffi_backend") is not None
import msicert_native
ffi_file = None
if has_cffi_backend and importlib.util.find_spec("msicert_native._ffi") is not None:
    import msicert_native._ffi
    ffi_file = msicert_native._ffi.__file__
print(json.dumps({
    "msicert_file": msicert.__file__,
    "after_import": after_import,
    "after_cli": after_cli,
    "help_codes": codes,
    "has_cffi_backend": has_cffi_backend,
    "backend": msicert_native.BACKEND,
    "ffi_file": ffi_file,
    "pycparser": sorted(m for m in sys.modules
                        if m.split(".")[0] == "pycparser" and sys.modules[m] is not None),
}))
"""

slow = pytest.mark.slow


@dataclass(frozen=True)
class Dists:
    """The sdist and wheel built from one copy of the sources."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Venv:
    """A virtual environment made with ``python -m venv``."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / ("Scripts/python.exe" if IS_WINDOWS else "bin/python")

    def script(self, name: str) -> Path:
        """Path of a console script installed into this venv."""
        suffix = ".exe" if IS_WINDOWS else ""
        return self.root / ("Scripts" if IS_WINDOWS else "bin") / (name + suffix)


def _run(cmd: list[str | Path], *, cwd: Path, timeout: float, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure (``check``) fail the test with the tail of its output."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=str(cwd), env=env or _BASE_ENV, capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(str(c) for c in cmd)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def _make_venv(path: Path) -> Venv:
    _run([sys.executable, "-m", "venv", path], cwd=path.parent, timeout=120)
    return Venv(path)


def _pip_install(venv: Venv, *args: str | Path, timeout: float = 300) -> None:
    _run([venv.python, "-m", "pip", "install", "-q", *args], cwd=venv.root, timeout=timeout)


def _demo_env(home: Path) -> dict[str, str]:
    """Environment for running the CLI: a private HOME, nothing from the work tree."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(_BASE_ENV, HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("SSL_CERT_FILE", None)
    return env


def _probe(python: Path | str, *, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    proc = _run([python, "-c", IMPORT_PROBE], cwd=cwd, env=env, timeout=120)
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _check_probe(result: dict[str, object]) -> None:
    assert result["pycparser"] == [], "pycparser was imported at run time"
    assert result["help_codes"] == [0] * 7, result["help_codes"]
    if not IS_WINDOWS:
        assert result["after_import"] == [], "`import msicert` imported msicert_native on POSIX"
        assert result["after_cli"] == [], "the CLI/client/demo modules import msicert_native"
    if result["has_cffi_backend"] and result["ffi_file"] is not None:
        assert result["backend"] == "cffi", result
    else:
        assert result["backend"] == "ctypes", result


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build`` (sdist, then the wheel from the sdist) on a copy of the sources."""
    base = tmp_path_factory.mktemp("build")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info", "_ffi.py",
                                    "_spec.py")
    for name in (*SOURCE_ENTRIES, *(p.name for p in ROOT.glob("LICENSE*"))):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    # A stale generated module in the tree must neither ship in the sdist nor reach the wheel.
    (src / "msicert_native" / "_ffi.py").write_text(STALE_FFI, encoding="utf-8")
    (src / "msicert_native" / "_spec.py").write_text(STALE_SPEC, encoding="utf-8")

    builder = _make_venv(base / "venv")
    _pip_install(builder, "--no-compile", "build")
    out = base / "dist"
    _run([builder.python, "-m", "build", "--outdir", out, src], cwd=base, timeout=600)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    return Dists(sdist=sdists[0], wheel=wheels[0])


@pytest.fixture(scope="module")
def wheel_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A clean venv with only the wheel and its runtime dependencies installed."""
    venv = _make_venv(tmp_path_factory.mktemp("wheel") / "venv")
    _pip_install(venv, dists.wheel)
    return venv


@pytest.fixture(scope="module")
def sdist_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A clean venv where pip built and installed the sdist itself."""
    venv = _make_venv(tmp_path_factory.mktemp("sdist") / "venv")
    _pip_install(venv, dists.sdist, timeout=600)
    return venv


@dataclass(frozen=True)
class Frozen:
    """A one-file PyInstaller build of the CLI and what PyInstaller said while making it."""

    exe: Path
    build_log: str
    venv: Venv


@pytest.fixture(scope="module")
def frozen(wheel_venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> Frozen:
    """``tools/freeze.sh`` run in the wheel's venv (PyInstaller added to it)."""
    if IS_WINDOWS:
        pytest.skip("tools/freeze.sh needs bash; Windows CI freezes in its own workflow step")
    proc = _run([wheel_venv.python, "-m", "pip", "install", "-q", "--no-compile", "pyinstaller"],
                cwd=wheel_venv.root, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.skip(f"PyInstaller cannot be installed here: {proc.stderr.strip()[-500:]}")
    base = tmp_path_factory.mktemp("frozen")
    env = dict(_BASE_ENV, PYTHON=str(wheel_venv.python), WORKDIR=str(base / "work"))
    proc = _run(["bash", ROOT / "tools" / "freeze.sh", base / "dist"], cwd=base, env=env,
                timeout=600)
    exe = base / "dist" / "msicert"
    assert exe.is_file(), proc.stdout
    return Frozen(exe=exe, build_log=proc.stdout + proc.stderr, venv=wheel_venv)


# --------------------------------------------------------------------------- fast tests


def test_hook_dirs_and_hiddenimports() -> None:
    """The hooks exist where ``get_hook_dirs()`` says and name what the CLI loads lazily."""
    import runpy

    from msicert._pyinstaller import get_hook_dirs

    (hook_dir,) = get_hook_dirs()
    hook_msicert = runpy.run_path(str(Path(hook_dir) / "hook-msicert.py"))
    hook_native = runpy.run_path(str(Path(hook_dir) / "hook-msicert_native.py"))
    hidden = set(hook_msicert["hiddenimports"])
    for name in ("msicert._cli", "msicert._cli_status", "msicert._demo", "msicert._token_cache",
                 "msicert._resource_call", "msicert._transport_failure", "msicert.wire._ests",
                 "msicert.backends.posix._ssl_transport", "msicert.emulator",
                 "msicert.emulator._server", "urllib3",
                 "msicert_native"):
        assert name in hidden, name
    assert not any(n.startswith("msicert._pyinstaller") or n.endswith("__main__") for n in hidden)
    native = set(hook_native["hiddenimports"])
    assert {"_cffi_backend", "msicert_native._ffi", "msicert_native._spec",
            "msicert_native._cffi_impl", "msicert_native._ctypes_impl"} <= native
    assert "pycparser" in hook_native["excludedimports"]


def _modules_on_disk(package: str) -> set[str]:
    """Every module and package below ``package``, found by walking the work tree's files."""
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.add(".".join(parts))
    return found


def test_hook_names_only_real_modules_and_every_module_on_disk() -> None:
    """The hook's explicit list follows the moves: each name is a module that exists, and the
    frozen app carries every module of the tree (the layout's packages included)."""
    import importlib.util
    import runpy

    from msicert._pyinstaller import get_hook_dirs

    (hook_dir,) = get_hook_dirs()
    hook = runpy.run_path(str(Path(hook_dir) / "hook-msicert.py"))
    for name in hook["_LAZY"]:
        if name.startswith("msicert"):
            assert (ROOT / (name.replace(".", "/") + ".py")).is_file() or (
                ROOT / name.replace(".", "/") / "__init__.py").is_file(), name
            assert importlib.util.find_spec(name) is not None, name
    expected = {n for n in _modules_on_disk("msicert")
                if not n.startswith("msicert._pyinstaller") and not n.endswith("__main__")}
    assert {"msicert.wire", "msicert.backends.contract", "msicert.backends.posix",
            "msicert.backends.windows._cert_store"} <= expected
    missing = expected - set(hook["hiddenimports"])
    assert not missing, sorted(missing)


def test_setuptools_packages_are_every_package_of_the_tree() -> None:
    """pyproject's explicit ``packages`` list names every directory with an ``__init__.py``:
    a package left out is silently missing from the wheel."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^\[tool\.setuptools\]\npackages = \[(.*?)\]", text, re.M | re.S)
    assert block is not None
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    on_disk = {".".join(p.relative_to(ROOT).parent.parts)
               for top in ("msicert", "msicert_native")
               for p in (ROOT / top).rglob("__init__.py")}
    assert listed == on_disk


def test_no_pycparser_and_no_native_import_in_tree() -> None:
    """From the work tree: the same probe as on the installed wheel, in a second."""
    env = dict(_BASE_ENV, PYTHONPATH=str(ROOT))
    result = _probe(sys.executable, cwd=ROOT, env=env)
    _check_probe(result)
    if (ROOT / "msicert_native" / "_ffi.py").is_file() and result["has_cffi_backend"]:
        assert result["backend"] == "cffi"


# --------------------------------------------------------------------------- slow tests


@slow
def test_sdist_contents(dists: Dists) -> None:
    """The sdist carries the cffi build inputs, and no generated ``_ffi.py``."""
    with tarfile.open(dists.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {
        "pyproject.toml", "setup.py", "README.md", "cdefs/build_ffi.py",
        "msicert/py.typed", "msicert_native/py.typed", "msicert/_pyinstaller/hook-msicert.py",
        "msicert/_pyinstaller/hook-msicert_native.py",
        *(f"cdefs/{name}" for name in CDEF_FILES),
    }
    assert CDEF_FILES, "no cdefs/*.cdef in the work tree"
    assert expected <= names, sorted(expected - names)
    assert "msicert_native/_ffi.py" not in names
    assert "msicert_native/_spec.py" not in names
    assert top.startswith("msicert-")


@slow
def test_wheel_is_pure_and_complete(dists: Dists) -> None:
    """py3-none-any; the generated ``_ffi.py``, both ``py.typed`` and the hooks are inside."""
    assert dists.wheel.name.endswith("-py3-none-any.whl"), dists.wheel.name
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        (wheel_info,) = (n for n in names if n.endswith(".dist-info/WHEEL"))
        wheel_meta = whl.read(wheel_info).decode()
        ffi = whl.read("msicert_native/_ffi.py").decode()
        spec = whl.read("msicert_native/_spec.py").decode()
    assert "Root-Is-Purelib: true" in wheel_meta
    assert re.findall(r"^Tag: (.+)$", wheel_meta, re.M) == ["py3-none-any"]
    for name in ("msicert/py.typed", "msicert_native/py.typed", "msicert/__main__.py",
                 "msicert/_demo.py", "msicert/emulator/__init__.py",
                 "msicert/_pyinstaller/__init__.py", "msicert/_pyinstaller/hook-msicert.py",
                 "msicert/_pyinstaller/hook-msicert_native.py", "msicert_native/__init__.py"):
        assert name in names, name
    for stub in ("_ffi.pyi", "_spec.pyi"):
        if (ROOT / "msicert_native" / stub).is_file():
            assert f"msicert_native/{stub}" in names
    assert not any(n.startswith(("cdefs/", "tests/")) for n in names)
    # Generated by cffi (out-of-line ABI mode), not the stale copy planted in the sources.
    assert ffi.startswith("# auto-generated file"), ffi[:200]
    assert "import _cffi_backend" in ffi and "pycparser" not in ffi and "stale" not in ffi
    # Generated from the same cdefs by cdefs/build_ffi.py, not the stale copy either.
    assert spec.startswith("# auto-generated file"), spec[:200]
    assert "'CertOpenStore': ('crypt32.dll'," in spec and "stale" not in spec


def _requires_dist(dists: Dists) -> list[tuple[str, str]]:
    """``Requires-Dist`` of the wheel's METADATA as (requirement, marker or '') pairs."""
    with zipfile.ZipFile(dists.wheel) as whl:
        (meta_name,) = (n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
    out: list[tuple[str, str]] = []
    for line in meta.get_all("Requires-Dist") or []:
        req, _, marker = line.partition(";")
        out.append((req.replace(" ", ""), re.sub(r"\s+", " ", marker.strip().replace("'", '"'))))
    return out


@slow
def test_wheel_runtime_dependencies(dists: Dists) -> None:
    """cryptography and urllib3 always; cffi only on Windows; nothing else outside extras."""
    runtime = [(r, m) for r, m in _requires_dist(dists) if "extra ==" not in m]
    names = {re.split(r"[<>=!~\[]", r, maxsplit=1)[0].lower(): m for r, m in runtime}
    assert len(names) == len(runtime), runtime
    assert set(names) == {"cryptography", "urllib3", "cffi"}, runtime
    assert names["cryptography"] == "" and names["urllib3"] == ""
    assert names["cffi"] == 'sys_platform == "win32"', names["cffi"]


@slow
def test_wheel_entry_points(dists: Dists) -> None:
    """The console script and the PyInstaller hook-dirs entry point are declared."""
    with zipfile.ZipFile(dists.wheel) as whl:
        (ep_name,) = (n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = whl.read(ep_name).decode()
    assert re.search(r"^\[console_scripts\]\nmsicert = msicert\._cli:main$", text, re.M), text
    assert re.search(
        r"^\[pyinstaller40\]\nhook-dirs = msicert\._pyinstaller:get_hook_dirs$", text, re.M
    ), text


@slow
def test_installed_wheel_runs_demo(wheel_venv: Venv, tmp_path: Path) -> None:
    """``python -m msicert demo`` and the ``msicert`` console script work from the wheel."""
    env = _demo_env(tmp_path / "home")
    proc = _run([wheel_venv.python, "-m", "msicert", "demo"], cwd=tmp_path, env=env, timeout=120)
    assert proc.stdout.strip(), "demo printed nothing"
    _run([wheel_venv.script("msicert"), "--help"], cwd=tmp_path, env=env, timeout=60)
    _run([wheel_venv.python, "-m", "pip", "check"], cwd=tmp_path, env=env, timeout=60)


@slow
def test_installed_wheel_imports_without_pycparser(wheel_venv: Venv, tmp_path: Path) -> None:
    """Installed wheel: no pycparser at run time; ``import msicert`` leaves msicert_native out."""
    result = _probe(wheel_venv.python, cwd=tmp_path, env=_demo_env(tmp_path / "home"))
    _check_probe(result)
    assert str(result["msicert_file"]).startswith(str(wheel_venv.root)), result["msicert_file"]
    if result["has_cffi_backend"]:
        # The generated module came with the wheel and loads without pycparser.
        assert result["ffi_file"] is not None, "the wheel has no msicert_native/_ffi.py"
        assert str(result["ffi_file"]).startswith(str(wheel_venv.root)), result["ffi_file"]
        assert result["backend"] == "cffi"


@slow
def test_installed_sdist_runs_demo(sdist_venv: Venv, tmp_path: Path) -> None:
    """``pip install <sdist>`` builds (generating ``_ffi.py``) and the demo runs."""
    env = _demo_env(tmp_path / "home")
    _run([sdist_venv.python, "-m", "msicert", "demo"], cwd=tmp_path, env=env, timeout=120)
    code = (
        "import os, msicert_native as m; "
        "print(open(os.path.join(os.path.dirname(m.__file__), '_ffi.py')).readline())"
    )
    proc = _run([sdist_venv.python, "-c", code], cwd=tmp_path, env=env, timeout=60)
    assert proc.stdout.startswith("# auto-generated file"), proc.stdout


@slow
def test_frozen_cli_runs_demo(frozen: Frozen, tmp_path: Path) -> None:
    """The one-file executable runs ``msicert demo`` (emulator, mTLS, tokens) and ``--help``."""
    hook_dir = str(Path("msicert") / "_pyinstaller")
    assert re.search(r"hook-msicert\.py' from '[^']*" + re.escape(hook_dir), frozen.build_log), \
        "PyInstaller did not load msicert's hook through the pyinstaller40 entry point"
    env = _demo_env(tmp_path / "home")
    _run([frozen.exe, "--help"], cwd=tmp_path, env=env, timeout=60)
    proc = _run([frozen.exe, "demo"], cwd=tmp_path, env=env, timeout=120)
    assert proc.stdout.strip(), "frozen demo printed nothing"


@slow
def test_frozen_bundle_contents(frozen: Frozen) -> None:
    """The hooks put the lazy modules, the generated ``_ffi`` and ``_cffi_backend`` inside."""
    viewer = frozen.venv.script("pyi-archive_viewer")
    proc = _run([viewer, "--recursive", "--brief", frozen.exe], cwd=frozen.exe.parent,
                timeout=120)
    entries = {line.strip() for line in proc.stdout.splitlines()}
    for name in ("msicert._cli", "msicert._cli_status", "msicert._demo", "msicert._token_cache",
                 "msicert._resource_call", "msicert._transport_failure", "msicert.wire._ests",
                 "msicert.backends.posix._ssl_transport", "msicert.emulator",
                 "msicert.emulator._server", "urllib3",
                 "msicert_native", "msicert_native._ffi", "msicert_native._cffi_impl",
                 "msicert_native._ctypes_impl", "msicert_native._spec", "msicert_native._win32"):
        assert name in entries, name
    assert any(e.startswith("_cffi_backend") for e in entries), "_cffi_backend not collected"
    assert not any(e.split(".")[0] == "pycparser" for e in entries), "pycparser was bundled"
