"""A failure at any write step, or while the store reads an entry, leaves no private key in
any local of any frame of its traceback.

Error reporters that capture locals (Sentry and its kin) repr every local of every frame, and
often one level into containers and objects. The walk below does the same, over the frames of
the traceback, their callers, and the tracebacks of chained exceptions.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from msicert import Identity
from msicert._secret import Secret
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix import _store_read, _store_write
from msicert.backends.posix._file_store import FileStore
from msicert.backends.posix._software_key import SoftwareKey
from tests.certgen import ISSUER_CN, key_pem, rsa_key
from tests.store_contract import entry

CRASH_POINTS = ("temp-half-written", "temp-synced", "renamed")  # _store_write._crash_point


class InjectedCrash(Exception):
    """Raised by the crash-point hook at the phase under test."""


def _frames(exc: BaseException) -> Iterator[FrameType]:
    seen_exc: set[int] = set()
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen_exc:
            continue
        seen_exc.add(id(e))
        todo += [e.__cause__, e.__context__]
        tb: TracebackType | None = e.__traceback__
        outer = tb.tb_frame if tb is not None else None
        while tb is not None:
            if id(tb.tb_frame) not in seen:
                seen.add(id(tb.tb_frame))
                yield tb.tb_frame
            tb = tb.tb_next
        frame = outer.f_back if outer is not None else None
        while frame is not None:  # the callers, up to the interpreter's first frame
            if id(frame) not in seen:
                seen.add(id(frame))
                yield frame
            frame = frame.f_back


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken repr is not what is being tested
        return f"<repr failed: {type(exc).__name__}>"


def _local_reprs(exc: BaseException) -> list[tuple[str, str]]:
    """(where, repr) for every local of every frame, and one level into its contents."""
    out: list[tuple[str, str]] = []
    for frame in _frames(exc):
        here = f"{frame.f_code.co_name}@{frame.f_code.co_filename}"
        for name, value in list(frame.f_locals.items()):
            out.append((f"{here} {name}", _safe_repr(value)))
            inner: list[object] = []
            if isinstance(value, dict):
                inner = list(value.values())
            elif isinstance(value, (list, tuple, set, frozenset)):
                inner = list(value)
            elif not isinstance(value, Secret):
                inner = _attributes(value)
            out += [(f"{here} {name}.*", _safe_repr(v)) for v in inner[:200]]
    return out


def _attributes(value: object) -> list[object]:
    """What a locals-capturing reporter sees one level down: __dict__ and __slots__ values."""
    found: list[object] = []
    if isinstance(getattr(value, "__dict__", None), dict):
        found += list(vars(value).values())
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                found.append(getattr(value, name))
    return found


def _key_fragments(pem: bytes) -> list[str]:
    """Windows over the private part of the key (everything from the private exponent on):
    as PEM base64, as hex and as a bytes repr. The public modulus is left out on purpose: the
    certificate carries it too, and a certificate is not a secret."""
    body = "".join(line for line in pem.decode().splitlines() if line and "-----" not in line)
    der = base64.b64decode(body)
    start = 320  # past the headers, the 2048-bit modulus and the exponent; refined below
    with contextlib.suppress(ValueError, TypeError):
        key = serialization.load_der_private_key(der, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        d = key.private_numbers().d
        start = der.index(d.to_bytes((d.bit_length() + 7) // 8, "big"))
    flat = body[(start * 4 + 2) // 3 + 4 :]
    hexed = binascii.hexlify(der[start:]).decode()
    shown = repr(der[start:])[2:-1]
    return ([flat[i : i + 32] for i in range(0, len(flat) - 32, 16)]
            + [hexed[i : i + 32] for i in range(0, len(hexed) - 32, 64)]
            + [shown[i : i + 40] for i in range(0, len(shown) - 40, 40)])


# A PEM private key block, however a repr escapes its line breaks (the bare marker constants
# the parser searches for are not a key).
_PEM_KEY = re.compile(r"PRIVATE KEY-----(?:\\n|\\r|\s)*[A-Za-z0-9+/]{16}")


def _leaks(reprs: list[tuple[str, str]], pem: bytes) -> list[str]:
    fragments = _key_fragments(pem)
    return [where for where, text in reprs
            if _PEM_KEY.search(text) or any(f in text for f in fragments)]


def _keys_in(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    return re.findall(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n", data, re.S)


def test_the_walk_finds_a_key_held_in_a_plain_local():
    # The detector itself must be able to fail: a PEM in a bytes local is found.
    def holder() -> None:
        pem = key_pem(rsa_key(2))  # noqa: F841 - the local the walk must see
        raise InjectedCrash("x")

    with pytest.raises(InjectedCrash) as info:
        holder()
    assert _leaks(_local_reprs(info.value), key_pem(rsa_key(2)))


@pytest.mark.parametrize("phase", CRASH_POINTS)
def test_failure_at_each_write_step_of_a_mint_leaves_no_key_in_traceback_locals(
        make_client, emu, store_dir, monkeypatch, phase):
    made: list[Secret[bytes]] = []
    real = SoftwareKey.generate

    def generate() -> SoftwareKey:
        key = real()
        pem = key.key_pem
        made.append(pem if isinstance(pem, Secret) else Secret(pem))  # the walk sees this list
        return key

    def crash(at: str) -> None:
        if at == phase:
            raise InjectedCrash(at)

    monkeypatch.setattr(SoftwareKey, "generate", staticmethod(generate))
    monkeypatch.setattr(_store_write, "_crash_point", crash)
    c = make_client()
    with pytest.raises(InjectedCrash) as info:
        c.get_certificate()
    reprs = _local_reprs(info.value)
    names = {where.split("@", 1)[0] for where, _ in reprs}
    assert {"_mint_locked", "put", "atomic_write", "crash"} <= names  # the write path's frames
    assert len(made) == 1
    assert _leaks(reprs, made[0].reveal()) == []
    if phase == "renamed":  # and the key walked for is the one that reached the disk
        assert _keys_in(FileStore(store_dir).path_for(Identity())) == [made[0].reveal()]


def _plant(store: FileStore, mangle) -> None:
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    path = store.path_for(Identity())
    Path(path).write_bytes(mangle(Path(path).read_bytes()))
    _store_read._verified.clear()
    _store_read._parsed.clear()


def _other_key(data: bytes) -> bytes:
    start = data.index(b"-----BEGIN PRIVATE KEY-----")
    stop = data.index(b"-----END PRIVATE KEY-----\n") + len(b"-----END PRIVATE KEY-----\n")
    return data[:start] + key_pem(rsa_key(5)) + data[stop:]


def _garbled_key(data: bytes) -> bytes:
    start = data.index(b"-----BEGIN PRIVATE KEY-----\n") + len(b"-----BEGIN PRIVATE KEY-----\n")
    return data[:start] + b"A" * 64 + data[start + 64 :]  # the DER header: no longer a key


def _two_keys(data: bytes) -> bytes:
    start = data.index(b"-----BEGIN PRIVATE KEY-----")
    return data[:start] + key_pem(rsa_key(5)) + data[start:]


@pytest.mark.parametrize(("mangle", "reason"), [
    (_other_key, "does not match"), (_garbled_key, "unparsable private key"),
    (_two_keys, "more than one private key"),
], ids=["mismatched-key", "garbled-key", "two-keys"])
def test_corrupt_entry_read_by_the_store_leaves_no_key_in_traceback_locals(
        tmp_path, mangle, reason):
    store = FileStore(str(tmp_path / "certs"))
    _plant(store, mangle)
    with pytest.raises(CorruptEntry) as info:
        store.find(Identity(), issuer_cn=ISSUER_CN)
    assert reason in str(info.value)
    reprs = _local_reprs(info.value)
    keys = _keys_in(store.path_for(Identity()))
    assert keys
    assert [_leaks(reprs, k) for k in keys] == [[] for _ in keys]


def test_software_key_pem_and_mint_record_are_secrets():
    from msicert._mint import Minted as _Minted

    key = SoftwareKey.generate()
    assert isinstance(key.key_pem, Secret) and b"PRIVATE KEY" in key.key_pem.reveal()
    assert "PRIVATE KEY" not in repr(key) + repr(vars(key)) + str(key.key_pem)
    minted = _Minted(der=b"", key=key, client_id="", tenant_id="", mtls_endpoint="",
                     identity_type="")
    assert "PRIVATE KEY" not in repr(_attributes(minted)) + repr(minted)
    assert any(attr is key for attr in _attributes(minted))  # the walk sees into slots
