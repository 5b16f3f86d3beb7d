"""What a failed re-mint leaves in the store.

A corrupt entry is removed before the new certificate is asked for, so when that mint fails
the caller gets IMDS's error AND the corrupt entry is gone (a successful mint would overwrite
it and hide whether it was removed). An entry refused only because of an explicit ``issuer=``
expectation is the opposite: the expectation may be what is wrong, so the entry stays, byte
for byte, when the re-mint fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msicert import ImdsError, MsiV2UnavailableError
from msicert.emulator import Fault
from tests.conftest import run_cli

RESOURCE = "https://vault.azure.net"

_CORRUPTIONS = {
    "junk": lambda data: b"not an entry at all\n" * 10,
    "truncated": lambda data: data[: len(data) // 2],
    "garbled-key": lambda data: data.replace(b"-----BEGIN PRIVATE KEY-----\n",
                                             b"-----BEGIN PRIVATE KEY-----\nAAAA", 1),
}
# (endpoint, fault, error, status, issuecredential calls of the failed mint: a 500 is tried
# four times, a 403 once, none after getplatformmetadata failed)
_FAILURES = {
    "issuecredential-403": ("issuecredential", Fault(status=403, times=None), ImdsError, 403, 1),
    "issuecredential-500": ("issuecredential", Fault(status=500, times=None), ImdsError, 500, 4),
    "getplatformmetadata-404": ("getplatformmetadata", Fault(status=404, times=None),
                                MsiV2UnavailableError, 404, 0),
}


def _entry(make_client) -> Path:
    cert = make_client().get_certificate()
    return Path(cert.store)


@pytest.mark.parametrize("failure", sorted(_FAILURES))
@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_a_corrupt_entry_is_gone_when_the_remint_fails_and_the_error_surfaces(
        make_client, emu, corruption, failure):
    path = _entry(make_client)
    path.write_bytes(_CORRUPTIONS[corruption](path.read_bytes()))
    endpoint, fault, error, status, tries = _FAILURES[failure]
    emu.inject(endpoint, fault)
    with pytest.raises(error) as info:
        make_client().get_certificate()  # a new client: nothing in memory
    assert info.value.status == status
    assert not path.exists()  # removed before the mint was tried
    assert emu.count("issuecredential") == 1 + tries


def test_a_corrupt_entry_is_gone_when_the_token_paths_remint_fails(make_client, emu):
    path = _entry(make_client)
    path.write_bytes(_CORRUPTIONS["junk"](b""))
    emu.inject("issuecredential", Fault(status=403, times=None))
    with pytest.raises(ImdsError, match="403"):
        make_client().acquire_token(RESOURCE)
    assert not path.exists()
    assert emu.count("token") == 0


def test_a_corrupt_entry_is_gone_when_another_processs_remint_fails(make_client, emu,
                                                                     store_dir):
    path = _entry(make_client)
    path.write_bytes(_CORRUPTIONS["truncated"](path.read_bytes()))
    emu.inject("issuecredential", Fault(status=403, times=None))
    proc = run_cli("cert", "--store-dir", store_dir)
    assert proc.returncode == 1 and "HTTP 403" in proc.stderr
    assert not path.exists()


@pytest.mark.parametrize("failure", sorted(_FAILURES))
def test_an_entry_refused_only_by_the_expected_issuer_is_kept_byte_identical_when_the_remint_fails(
        make_client, emu, failure):
    path = _entry(make_client)
    before, stat_before = path.read_bytes(), os.stat(path)
    endpoint, fault, error, status, tries = _FAILURES[failure]
    emu.inject(endpoint, fault)
    with pytest.raises(error) as info:
        make_client(issuer="other-issuer.example").get_certificate()
    assert info.value.status == status and emu.count("issuecredential") == 1 + tries
    assert path.read_bytes() == before
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (stat_before.st_ino, stat_before.st_mtime_ns)
    emu.clear_faults()
    assert make_client().get_certificate().source == "store"  # still the usable entry


def test_an_entry_refused_only_by_the_expected_issuer_is_kept_when_the_new_one_is_refused_too(
        make_client, emu):
    from msicert import ImdsResponseError

    path = _entry(make_client)
    before = path.read_bytes()
    with pytest.raises(ImdsResponseError, match="issuer"):
        make_client(issuer="other-issuer.example").get_certificate()  # IMDS issues, refused
    assert emu.count("issuecredential") == 2
    assert path.read_bytes() == before
