"""Benchmark fixtures: an isolated environment, the emulator, a minted entry, populated stores.

Nothing here touches the real HOME or a real IMDS: HOME points at a temp directory, every
client gets an explicit ``store_dir`` and the emulator's ``imds_url``, and ``SSL_CERT_FILE``
names the emulator's CA so the ESTS leg trusts it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python3 -m pytest benchmarks` from elsewhere
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from msicert import BindingCertificate, ManagedIdentityClient
    from msicert.emulator import Emulator

ENTRY_NAME = "msal_mtls.pem"  # the system-assigned identity's file


def _loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


_LOAD_AT_START = _loadavg()  # this is a shared machine: record how busy it was


def _under_wine() -> bool:
    """True for Windows CPython running under Wine (ntdll exports wine_get_version)."""
    if sys.platform != "win32":
        return False
    import ctypes

    try:
        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    except OSError:
        return False


if _under_wine():

    @pytest.hookimpl(tryfirst=True)
    def pytest_benchmark_generate_machine_info(config: pytest.Config) -> dict[str, Any]:
        """Under Wine, py-cpuinfo's helper process hangs: describe the machine without it."""
        import platform

        return {
            "node": platform.node(), "processor": platform.processor(),
            "machine": platform.machine(), "python_compiler": platform.python_compiler(),
            "python_implementation": platform.python_implementation(),
            "python_implementation_version": platform.python_version(),
            "python_version": platform.python_version(),
            "python_build": list(platform.python_build()), "release": platform.release(),
            "system": platform.system(), "cpu": {"brand_raw": "unknown (Wine: py-cpuinfo skipped)"},
        }


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """Add the load average (at collection and at the end) and nproc to the JSON."""
    machine_info["loadavg_at_start"] = _LOAD_AT_START
    machine_info["loadavg_at_end"] = _loadavg()
    machine_info["nproc"] = os.cpu_count()


@dataclass(frozen=True)
class MintedEntry:
    """One store entry minted by the emulator for the system-assigned identity."""

    data: bytes  # the whole file: metadata, private key, certificate
    path: str  # where it was minted (kept for reference)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run each floor right before the benchmark judged against it (``test_floor_X[p]`` just
    before ``test_X[p]``): on a shared machine, less drift between the two medians."""
    by_name = {item.name: item for item in items}
    paired = {f"test_floor_{item.name[len('test_'):]}" for item in items} & set(by_name)
    ordered: list[pytest.Item] = []
    for item in items:
        if item.name in paired:
            continue  # placed with its partner
        floor = by_name.get(f"test_floor_{item.name[len('test_'):]}")
        if floor is not None:
            ordered.append(floor)
        ordered.append(item)
    items[:] = ordered


@pytest.fixture(scope="session", autouse=True)
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private HOME, no inherited msicert settings, no SSL_CERT_DIR."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for name in ("XDG_CONFIG_HOME", "MSICERT_ISSUER", "SSL_CERT_DIR", "SSL_CERT_FILE",
                     "AZURE_POD_IDENTITY_AUTHORITY_HOST", "MSICERT_NATIVE_BACKEND"):
            mp.delenv(name, raising=False)
        mp.setenv("MSICERT_IMDS_RETRY_SCALE", "0.001")
        yield home


@pytest.fixture(scope="session")
def emulator(bench_env: Path) -> Iterator[Emulator]:
    """The emulator (7-day certificates, like production), with the environment pointing at it."""
    from msicert.emulator import Emulator

    emu = Emulator(lifetime=7 * 86400.0, backdate=60.0, token_lifetime=3600.0)
    emu.start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in emu.env().items():
            mp.setenv(name, value)
        try:
            yield emu
        finally:
            emu.stop()


@pytest.fixture(scope="session")
def make_client(emulator: Emulator) -> Callable[[str], ManagedIdentityClient]:
    """``make_client(store_dir)``: a new system-identity client on the emulator."""
    from msicert import ManagedIdentityClient

    def make(store_dir: str) -> ManagedIdentityClient:
        return ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emulator.imds_url)

    return make


@pytest.fixture(scope="session")
def minted_entry(
    tmp_path_factory: pytest.TempPathFactory, make_client: Callable[[str], ManagedIdentityClient]
) -> MintedEntry:
    """One real mint through the emulator; its store file is copied into the benchmark stores."""
    store_dir = tmp_path_factory.mktemp("minted") / "certs"
    cert = make_client(str(store_dir)).get_certificate()
    assert cert.source == "imds"
    return MintedEntry(Path(cert.store).read_bytes(), cert.store)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _other_identity_entry(data: bytes, index: int) -> tuple[str, bytes]:
    """Another user-assigned identity's file (same shape; never read by the system lookup)."""
    client_id = f"00000000-0000-4000-8000-{index:012d}"
    body = data.replace(b"identity: system", f"identity: client_id={client_id}".encode(), 1)
    return f"msal_mtls.client_id-{client_id}.pem", body


@pytest.fixture(scope="session")
def populated_store(
    tmp_path_factory: pytest.TempPathFactory, minted_entry: MintedEntry
) -> Callable[[int], str]:
    """``populated_store(n)``: a 0700 store dir with the valid system entry and ``n`` others.

    The others alternate between other identities' entries (``msal_mtls.client_id-*.pem``
    and their ``.lock`` files) and foreign files, so the directory looks lived in.
    """
    made: dict[int, str] = {}

    def make(others: int) -> str:
        if others in made:
            return made[others]
        base = tmp_path_factory.mktemp(f"store-{others}")
        directory = base / "certs"
        directory.mkdir(mode=0o700)
        _write_private(directory / ENTRY_NAME, minted_entry.data)
        for i in range(others):
            if i % 2 == 0:
                name, body = _other_identity_entry(minted_entry.data, i)
            elif i % 4 == 1:
                name, body = f"msal_mtls.client_id-00000000-0000-4000-8000-{i:012d}.lock", b""
            else:
                name, body = f"foreign-{i:05d}.dat", os.urandom(3500)
            _write_private(directory / name, body)
        assert len(os.listdir(directory)) == others + 1
        made[others] = str(directory)
        return made[others]

    return make


@pytest.fixture(scope="session")
def stored_cert(
    populated_store: Callable[[int], str], make_client: Callable[[str], ManagedIdentityClient]
) -> BindingCertificate:
    """The valid entry as a BindingCertificate read from a store (``source == "store"``)."""
    cert = make_client(populated_store(1)).get_certificate()
    assert cert.source == "store"
    return cert
