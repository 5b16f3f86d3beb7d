"""The POSIX file store: contract suite plus permissions, symlinks, atomicity, corruption."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from msicert import Identity, StoreError
from msicert.backends.contract import CorruptEntry
from msicert.backends.posix import _store_read
from msicert.backends.posix._file_store import FileStore, default_directory
from tests.certgen import ISSUER_CN, key_pem, rsa_key
from tests.store_contract import UAMI, StoreContract, entry


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "msal" / "certs"))


class TestFileStoreContract(StoreContract):
    pass


def test_put_replaces_the_previous_entry_of_the_identity_in_its_one_file(store):
    first = store.put(Identity(), entry(key_no=0), issuer_cn=ISSUER_CN)
    second = store.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    assert store.remove(Identity(), first.x5t_s256) is False  # gone with the replacement
    assert store.find(Identity(), issuer_cn=ISSUER_CN).x5t_s256 == second.x5t_s256
    assert os.listdir(os.path.dirname(store.path_for(Identity()))) == ["msal_mtls.pem"]


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_default_directory_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_directory() == str(tmp_path / "xdg" / "msal" / "certs")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == str(tmp_path / "home" / ".config" / "msal" / "certs")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_directory_0700_and_file_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        s = FileStore(str(tmp_path / "a" / "certs"))
        s.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    finally:
        os.umask(old)
    assert mode(s.directory) == 0o700
    assert mode(tmp_path / "a") == 0o700
    assert mode(s.path_for(Identity())) == 0o600
    assert os.path.basename(s.path_for(Identity())) == "msal_mtls.pem"


def test_one_file_holds_metadata_key_and_certificate_readable_by_openssl(store):
    e = entry()
    store.put(Identity(), e, issuer_cn=ISSUER_CN)
    path = store.path_for(Identity())
    text = Path(path).read_bytes()
    assert text.startswith(b"msicert-entry: 1\nidentity: system\n")
    assert b"mtls_endpoint: https://127.0.0.1:1\n" in text
    assert text.count(b"-----BEGIN PRIVATE KEY-----") == 1
    assert text.count(b"-----BEGIN CERTIFICATE-----") == 1
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-subject", "-issuer"],
                         capture_output=True, text=True, check=True).stdout
    assert "managedidentitysnissuer.login.microsoft.com" in out
    # openssl pairs the key and certificate from the very same file
    mod_key = subprocess.run(["openssl", "rsa", "-in", path, "-noout", "-modulus"],
                             capture_output=True, text=True, check=True).stdout
    mod_crt = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-modulus"],
                             capture_output=True, text=True, check=True).stdout
    assert mod_key == mod_crt


def test_user_assigned_identities_get_their_own_files(store):
    names = {
        os.path.basename(store.path_for(i))
        for i in (Identity(), UAMI, Identity.from_selectors(object_id=UAMI.value),
                  Identity.from_selectors(resource_id="/subscriptions/s/resourceGroups/g/providers/"
                                          "Microsoft.ManagedIdentity/userAssignedIdentities/x"))
    }
    assert len(names) == 4
    assert "msal_mtls.pem" in names
    assert f"msal_mtls.client_id-{UAMI.value}.pem" in names


def test_symlinked_store_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cfg").mkdir()
    os.symlink(real, tmp_path / "cfg" / "certs")
    with pytest.raises(StoreError, match="symlink"):
        FileStore(str(tmp_path / "cfg" / "certs")).find(Identity(), issuer_cn=ISSUER_CN)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_store_directory_owned_by_another_user_is_refused(tmp_path):
    d = tmp_path / "certs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(StoreError, match="owned by uid 65534"):
        FileStore(str(d)).find(Identity(), issuer_cn=ISSUER_CN)


def test_too_open_directory_is_tightened_with_a_warning(tmp_path, caplog):
    d = tmp_path / "certs"
    d.mkdir()
    os.chmod(d, 0o755)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        FileStore(str(d)).find(Identity(), issuer_cn=ISSUER_CN)
    assert mode(d) == 0o700
    assert any("tightening to 0700" in r.getMessage() for r in caplog.records)


def test_too_open_entry_is_tightened_to_0600(store, caplog):
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    os.chmod(store.path_for(Identity()), 0o644)
    with caplog.at_level(logging.WARNING, logger="msicert"):
        assert store.find(Identity(), issuer_cn=ISSUER_CN) is not None
    assert mode(store.path_for(Identity())) == 0o600


def test_stray_temp_files_are_swept_on_write(store):
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    stray = os.path.join(store.directory, ".msal_mtls.pem.tmp-99999-deadbeef")
    with open(stray, "wb") as f:
        f.write(b"half a key")
    other = os.path.join(store.directory, "unrelated.txt")
    open(other, "w").close()
    store.put(Identity(), entry(key_no=1), issuer_cn=ISSUER_CN)
    assert not os.path.exists(stray)
    assert os.path.exists(other)
    assert sorted(os.listdir(store.directory)) == ["msal_mtls.pem", "unrelated.txt"]


def _write_entry(store, data: bytes) -> None:
    store.ensure_directory()
    path = store.path_for(Identity())
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _good_bytes(store) -> bytes:
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    return open(store.path_for(Identity()), "rb").read()


def _cut(data: bytes, begin: bytes, end: bytes) -> bytes:
    i, j = data.index(begin), data.index(end) + len(end) + 1
    return data[:i] + data[j:]


CORRUPTIONS = {
    "empty file": lambda d: b"",
    "truncated": lambda d: d[: len(d) - 200],
    "unparsable certificate": lambda d: d.replace(d[d.index(b"-----BEGIN CERTIFICATE-----") + 40 :
                                                  d.index(b"-----BEGIN CERTIFICATE-----") + 60],
                                                  b"A" * 20),
    "certificate without private key": lambda d: _cut(d, b"-----BEGIN PRIVATE KEY-----",
                                                      b"-----END PRIVATE KEY-----"),
    "no certificate": lambda d: _cut(d, b"-----BEGIN CERTIFICATE-----",
                                     b"-----END CERTIFICATE-----"),
    "does not match": lambda d: _cut(
        d, b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"
    ).replace(b"-----BEGIN CERTIFICATE-----", key_pem(rsa_key(5)) + b"-----BEGIN CERTIFICATE-----"),
    "missing header": lambda d: d[d.index(b"-----BEGIN"):],
    "another identity": lambda d: d.replace(b"identity: system", b"identity: object_id=x"),
    "larger than": lambda d: d + b"#" * (70 * 1024),
    "not UTF-8": lambda d: b"\xff\xfe" + d,
}


@pytest.mark.parametrize("reason", sorted(CORRUPTIONS))
def test_corrupt_entries_are_reported_as_corrupt_with_the_reason(store, reason):
    _write_entry(store, CORRUPTIONS[reason](_good_bytes(store)))
    _store_read._verified.clear()
    with pytest.raises(CorruptEntry) as info:
        store.find(Identity(), issuer_cn=ISSUER_CN)
    assert reason.split()[0] in str(info.value) or reason in info.value.reason


def test_symlinked_entry_is_corrupt_not_followed(store, tmp_path):
    target = tmp_path / "elsewhere.pem"
    target.write_bytes(_good_bytes(store))
    os.unlink(store.path_for(Identity()))
    os.symlink(target, store.path_for(Identity()))
    with pytest.raises(CorruptEntry, match="symlink"):
        store.find(Identity(), issuer_cn=ISSUER_CN)
    assert store.remove(Identity()) is True
    assert target.exists()  # the link went, not what it pointed at


def test_hot_path_checks_the_key_once_per_process_and_never_validates_rsa(store, monkeypatch):
    calls = []
    real = serialization.load_pem_private_key

    def spy(data, password, **kw):
        calls.append(kw)
        return real(data, password, **kw)

    monkeypatch.setattr(serialization, "load_pem_private_key", spy)
    _store_read._verified.clear()
    store.put(Identity(), entry(), issuer_cn=ISSUER_CN)
    for _ in range(5):
        FileStore(store.directory).find(Identity(), issuer_cn=ISSUER_CN)
    assert calls == [{"unsafe_skip_rsa_key_validation": True}]
