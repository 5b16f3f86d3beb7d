"""The store directory is checked again before every write and lock,
recreated when it went away, refused when it was replaced; modes are only ever narrowed."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from msicert import Identity, StoreError
from msicert.backends.posix._file_store import FileStore
from tests.certgen import ISSUER_CN
from tests.store_contract import entry


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_store_directory_removed_under_a_live_client_is_recreated_by_the_renewal(
        make_client, emu, store_dir, caplog):
    emu.lifetime = 1000.0
    clock = Clock()
    c = make_client(clock=clock)
    old = c.get_certificate()
    shutil.rmtree(Path(store_dir).parent)  # rm -rf ~/.config/msal, or a tmp cleaner
    clock.offset = old.renew_after_ts - time.time() + 1
    with caplog.at_level(logging.WARNING, logger="msicert"):
        new = c.get_certificate()
    assert new.source == "imds" and new.x5t_s256 != old.x5t_s256
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert mode(store_dir) == 0o700 and mode(Path(store_dir).parent) == 0o700
    stored = FileStore(store_dir).find(c.identity, issuer_cn=c.issuer_cn)
    assert stored is not None and stored.x5t_s256 == new.x5t_s256
    assert mode(FileStore(store_dir).path_for(c.identity)) == 0o600
    assert emu.count("issuecredential") == 2


def test_store_directory_removed_under_a_live_client_is_recreated_by_purge_and_mint(
        make_client, emu, store_dir):
    c = make_client()
    first = c.get_certificate()
    shutil.rmtree(store_dir)
    assert len(c.purge()) == 0  # the lock path recreated it
    assert mode(store_dir) == 0o700
    again = c.get_certificate()
    assert again.source == "imds" and again.x5t_s256 != first.x5t_s256
    assert os.path.exists(FileStore(store_dir).path_for(c.identity))
    assert emu.count("issuecredential") == 2


def test_store_directory_replaced_by_a_symlink_under_a_live_client_is_refused(
        make_client, emu, store_dir, tmp_path):
    c = make_client()
    c.get_certificate()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.rename(store_dir, str(tmp_path / "moved-away"))
    os.symlink(elsewhere, store_dir)
    with pytest.raises(StoreError, match="symlink"):
        c.purge()
    with pytest.raises(StoreError, match="symlink"):
        c.get_certificate()  # nothing in memory (purge), nothing found: a mint is refused
    with pytest.raises(StoreError, match="symlink"):
        FileStore(store_dir).put(Identity(), entry(), issuer_cn=ISSUER_CN)
    assert os.listdir(elsewhere) == []  # not even a lock file
    assert emu.count("issuecredential") == 1


def test_store_directory_replaced_by_a_file_under_a_live_store_refuses_the_write(tmp_path):
    s = FileStore(str(tmp_path / "certs"))
    s.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    shutil.rmtree(s.directory)
    Path(s.directory).write_bytes(b"x")
    with pytest.raises(StoreError, match="not a directory"):
        s.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    assert Path(s.directory).read_bytes() == b"x"


# --- 5b: never widen a mode ---------------------------------------------------------------

@pytest.mark.parametrize("bits", [0o500, 0o550, 0o300, 0o600], ids=oct)
def test_directory_whose_owner_lacks_permissions_is_refused_never_widened(tmp_path, bits):
    d = tmp_path / "certs"
    d.mkdir()
    os.chmod(d, bits)
    s = FileStore(str(d))
    with pytest.raises(StoreError) as info:
        s.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    assert f"mode {bits:04o}" in str(info.value) and "never widens" in str(info.value)
    with pytest.raises(StoreError, match=f"mode {bits:04o}"):
        FileStore(str(d)).find(Identity(), issuer_cn=ISSUER_CN)
    assert mode(d) == bits  # untouched: no write bit added, no group bit removed either
    os.chmod(d, 0o700)
    assert os.listdir(d) == []  # nothing was written (root could have, by the mode alone)


@pytest.mark.parametrize(("bits", "expected"), [(0o750, 0o700), (0o777, 0o700), (0o705, 0o700)],
                         ids=["0750", "0777", "0705"])
def test_too_open_directory_loses_only_group_and_other_bits(tmp_path, caplog, bits, expected):
    d = tmp_path / "certs"
    d.mkdir()
    os.chmod(d, bits)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        FileStore(str(d)).put(Identity(), entry(), issuer_cn=ISSUER_CN)
    assert mode(d) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"had mode {bits:04o}" in warnings[0]
    assert "removing group/other permissions" in warnings[0]


def test_directory_made_0500_under_a_live_store_refuses_the_next_write(tmp_path):
    s = FileStore(str(tmp_path / "certs"))
    s.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    before = Path(s.path_for(Identity())).read_bytes()
    os.chmod(s.directory, 0o500)
    assert s.find(Identity(), issuer_cn=ISSUER_CN) is not None  # the hot path is not re-checked
    with pytest.raises(StoreError, match="mode 0500"):
        s.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    with pytest.raises(StoreError, match="mode 0500"):
        s.lock(Identity(), timeout=1.0)
    assert Path(s.path_for(Identity())).read_bytes() == before
    assert mode(s.directory) == 0o500


@pytest.mark.parametrize(("bits", "expected"), [(0o400, 0o400), (0o440, 0o400), (0o644, 0o600)],
                         ids=["0400", "0440", "0644"])
def test_entry_file_loses_only_group_and_other_bits(tmp_path, bits, expected):
    s = FileStore(str(tmp_path / "certs"))
    s.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    os.chmod(s.path_for(Identity()), bits)
    assert s.find(Identity(), issuer_cn=ISSUER_CN) is not None
    assert mode(s.path_for(Identity())) == expected
