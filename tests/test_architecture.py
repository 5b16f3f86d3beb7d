"""The package's shape: no import cycle (TYPE_CHECKING and function-level imports counted),
native code reached only from the Windows backend, layers importing one way, no ``getattr``
probing of the contract's objects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "msicert"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    # hook-*.py are PyInstaller hook scripts (run by path, never imported as modules)
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "-" not in p.name}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, wherever the import statement sits (module level,
    inside functions, under ``if TYPE_CHECKING:``): ``from X import n`` counts as an import
    of ``X.n`` when that is a module, else of ``X``. Implicit parent-package imports are not
    edges (every submodule would otherwise loop through ``msicert/__init__``)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_collector_counts_type_checking_and_function_level_imports() -> None:
    graph = _graph()
    # under `if TYPE_CHECKING:` in the client
    assert "msicert._token_cache" in graph["msicert._client"]
    # inside a function (default_store picks the backend on first use)
    assert "msicert.backends.posix._file_store" in graph["msicert.backends"]
    # relative, three levels up
    assert "msicert._errors" in graph["msicert.backends.posix._flock"]


def test_the_package_import_graph_has_no_cycle() -> None:
    cycle = _find_cycle(_internal(_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_windows_backend_imports_msicert_native() -> None:
    offenders = sorted(
        m for m, targets in _graph().items()
        if any(t == "msicert_native" or t.startswith("msicert_native.") for t in targets)
        and not m.startswith("msicert.backends.windows")
    )
    assert offenders == []


def _layer_violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} -> {t}" for m, targets in _internal(_graph()).items() if m.startswith(source)
        for t in targets if t.startswith(forbidden)
    )


# The token leg: the token cache, the token request to ESTS, the resource call and what a
# failed attempt means.
TOKEN_LEG = ("msicert._token_cache", "msicert._token_request", "msicert._resource_call",
             "msicert._transport_failure")


@pytest.mark.parametrize(("source", "forbidden"), [
    # the wire formats know no backend (the contract's types excepted) and no orchestration
    ("msicert.wire", ("msicert.backends.posix", "msicert.backends.windows", "msicert._client",
                      "msicert._lifecycle", "msicert._mint", *TOKEN_LEG, "msicert._cli")),
    # a backend never reaches the other backend, the client, its lifecycle or the token leg
    ("msicert.backends.posix", ("msicert.backends.windows", "msicert._client",
                                "msicert._lifecycle", "msicert._mint", *TOKEN_LEG)),
    ("msicert.backends.windows", ("msicert.backends.posix", "msicert._client",
                                  "msicert._lifecycle", "msicert._mint", *TOKEN_LEG)),
    # the contract is the bottom of the backends: it names no backend
    ("msicert.backends.contract", ("msicert.backends.posix", "msicert.backends.windows")),
    # the client and the token leg see backends only through the contract and default_store
    ("msicert._client", ("msicert.backends.posix", "msicert.backends.windows")),
    ("msicert._lifecycle", ("msicert.backends.posix", "msicert.backends.windows")),
    ("msicert._mint", ("msicert.backends.posix", "msicert.backends.windows")),
    *[(module, ("msicert.backends.posix", "msicert.backends.windows")) for module in TOKEN_LEG],
])
def test_layers_import_one_way(source: str, forbidden: tuple[str, ...]) -> None:
    assert _layer_violations(source, forbidden) == []


_CONTRACT_WORDS = ("store", "key", "entry", "transport", "tls", "client", "pool")


def test_no_getattr_probes_a_store_key_entry_or_transport() -> None:
    """A contract has no holes (style habit 16): ``getattr(<store/key/entry/...>, "x", ...)``
    means the protocol lacks ``x``."""
    found = []
    for name, path in _modules().items():
        if name.startswith("msicert.emulator"):
            continue  # the emulator is the service's stand-in, not a user of the contract
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and node.args):
                target = ast.unparse(node.args[0]).lower()
                if any(word in target for word in _CONTRACT_WORDS):
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


@pytest.mark.parametrize("package", ["msicert.wire", "msicert.backends", "msicert.backends.posix",
                                     "msicert.backends.windows"])
def test_each_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    import importlib

    doc = importlib.import_module(package).__doc__ or ""
    assert "import" in doc and len(doc.split()) > 30, package
    named = {p.stem for p in (ROOT / package.replace(".", "/")).glob("_*.py")} - {"__init__"}
    named |= {p.stem for p in (ROOT / package.replace(".", "/")).glob("[a-z]*.py")}
    for module in named:  # every module of the package is described there
        assert f"``{module}``" in doc or f"{package}.{module}" in doc or module in doc, module


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="checks the non-Windows case")
def test_the_windows_backend_imports_here_and_its_calls_fail_clearly() -> None:
    """filelock-style: the names exist off Windows, and using them says why it cannot work."""
    from msicert import Identity, StoreError
    from msicert.backends.windows._cert_store import WindowsStore
    from msicert.backends.windows._mutex import MutexLock

    store = WindowsStore("current-user")
    with pytest.raises(StoreError, match=r"cannot open CurrentUser\\My: .*needs Windows"):
        store.find(Identity(), issuer_cn="x")
    with pytest.raises(StoreError, match=r"cannot create the mutex .*needs Windows"), \
            MutexLock("Global\\msicert-test", timeout=1.0).hold():
        pass
