"""Host capabilities and the strength floor: ``msicert.capabilities()``, ``msicert probe`` and
``ManagedIdentityClient(min_strength=...)`` against the emulator (IMDS v2), a v1-only host
and a dead endpoint. Strengths: none < bearer < software < keyguard."""

from __future__ import annotations

import json

import pytest

import msicert
from msicert import ManagedIdentityClient, MinStrengthNotMet
from msicert import _capabilities as caps_module
from msicert._capabilities import key_strength
from msicert.backends.posix._file_store import FileStore
from tests.conftest import run_cli
from tests.test_cli_conventions import DEAD, v1_host  # noqa: F401 - a fixture


@pytest.fixture(autouse=True)
def _fresh_process_cache(monkeypatch):
    """Each test is a new process as far as the per-process caches go."""
    monkeypatch.setattr(caps_module, "_hosts", {})
    monkeypatch.setattr(caps_module, "_keys", {})


def _all_counts(emu) -> int:
    return sum(emu.count(e) for e in ("getplatformmetadata", "issuecredential", "token"))


def test_an_imds_v2_host_with_a_file_store_is_software_and_the_answer_is_kept(emu, store_dir):
    found = msicert.capabilities(emu.imds_url, store_dir=store_dir)
    assert (found.source, found.max_binding_strength) == ("imds", "software")
    assert found.mtls_pop_supported and found.error_reason is None
    assert "IMDS v2 answered" in found.reasons[0] and store_dir in found.reasons[1]
    assert emu.count("getplatformmetadata") == 1 and emu.count("issuecredential") == 0
    assert msicert.capabilities(emu.imds_url, store_dir=store_dir) is found  # per process
    assert emu.count("getplatformmetadata") == 1
    again = msicert.capabilities(emu.imds_url, store_dir=store_dir, refresh=True)
    assert again.reasons == found.reasons and again is not found
    assert emu.count("getplatformmetadata") == 2
    assert emu.count("issuecredential") == 0  # never a mint


def test_a_v1_only_host_is_bearer_and_no_imds_is_none(v1_host):  # noqa: F811
    v1 = msicert.capabilities(f"http://127.0.0.1:{v1_host.server_port}")
    assert (v1.source, v1.max_binding_strength, v1.mtls_pop_supported) == ("imds", "bearer",
                                                                           False)
    assert "IMDS v1 answered" in v1.reasons[1] and "HTTP 404" in v1.reasons[0]
    dead = msicert.capabilities(DEAD)
    assert (dead.source, dead.max_binding_strength) == ("none", "none")
    assert "unreachable" in dead.error_reason and dead.probe.unreachable


def test_probe_command_reports_the_max_binding_strength_with_reasons(emu):
    out = run_cli("probe", "--json")
    document = json.loads(out.stdout)
    assert out.returncode == 0 and document["source"] == "imds_v2"
    assert document["max_binding_strength"] == "software"
    assert len(document["binding_strength_reasons"]) == 2
    text = run_cli("probe", "--imds-endpoint", DEAD)
    assert "max_binding_strength  none" in text.stdout.splitlines()
    assert text.returncode == 1


def test_a_keyguard_floor_fails_before_any_imds_call_naming_the_hosts_strength(emu, store_dir):
    with pytest.raises(MinStrengthNotMet) as info:
        ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url,
                              min_strength="keyguard")
    assert (info.value.actual, info.value.required) == ("software", "keyguard")
    assert "maximum binding strength is 'software'" in str(info.value)
    assert "min_strength='keyguard'" in str(info.value) and info.value.code == \
        "min_strength_not_met"
    assert _all_counts(emu) == 0  # not even a probe


@pytest.mark.parametrize("floor", ["software", "bearer", "SOFTWARE"])
def test_a_floor_the_host_meets_changes_nothing(make_client, emu, floor):
    client = make_client(min_strength=floor)
    assert client.min_strength == floor.lower()
    assert _all_counts(emu) == 0  # checking it cost no IMDS call
    client.get_certificate()
    assert emu.count("issuecredential") == 1


def test_an_unknown_floor_is_a_value_error(make_client):
    for bad in ("none", "tpm", ""):
        with pytest.raises(ValueError, match="bearer', 'software', 'keyguard'"):
            make_client(min_strength=bad)


def test_a_floor_uses_what_capabilities_found_earlier_in_the_process(v1_host, store_dir):  # noqa: F811
    endpoint = f"http://127.0.0.1:{v1_host.server_port}"
    assert msicert.capabilities(endpoint, store_dir=store_dir).max_binding_strength == "bearer"
    probes = len(v1_host.paths)
    with pytest.raises(MinStrengthNotMet, match=r"'bearer'.*IMDS v1 answered") as info:
        ManagedIdentityClient(store_dir=store_dir, imds_endpoint=endpoint,
                              min_strength="software")
    assert info.value.actual == "bearer" and len(v1_host.paths) == probes


class _CertificateStoreLike:
    """A store without a directory whose keys come from a provider: KeyGuard needs VBS
    hardware that cannot run here, so the key's kind is the fake part."""

    directory = None

    def __init__(self, kind: str) -> None:
        self.kind, self.made, self.discarded = kind, 0, 0
        self.description = f"CurrentUser\\My (fake {kind} provider)"

    def generate_key(self, identity):
        self.made += 1
        store = self

        class Key:  # only the kind is read; the probe key is then deleted
            kind = self.kind

            def discard(self) -> None:
                store.discarded += 1

        return Key()


def test_keyguard_host_strength_comes_from_the_key_it_can_make_fake_keyguard_provider():
    keyguard = _CertificateStoreLike("keyguard")
    assert key_strength(keyguard)[0] == "keyguard"
    assert key_strength(keyguard)[0] == "keyguard"  # kept: one probe key per process
    assert (keyguard.made, keyguard.discarded) == (1, 1)
    ManagedIdentityClient(store=keyguard, min_strength="keyguard")  # the floor is met
    software = _CertificateStoreLike("software-ksp")
    strength, why = key_strength(software)
    assert strength == "software" and "software-ksp" in why and software.discarded == 1
    with pytest.raises(MinStrengthNotMet, match="'software'"):
        ManagedIdentityClient(store=software, min_strength="keyguard")


class _KeyGuardLikeStore:
    """A certificate store without a directory (as the Windows one) over the file store, whose
    keys report the kind a KeyGuard provider would make (``self.kind``): VBS hardware cannot
    run here, so the kind is the fake part. Entries read back carry the kind their key was
    made with, as the Windows store's tag records it."""

    directory = None

    def __init__(self, directory: str, kind: str) -> None:
        self._files = FileStore(directory)
        self.description = f"CurrentUser\\My (fake KeyGuard provider over {directory})"
        self.kind = kind
        self.kinds: dict[str, str] = {}
        for name in ("remove", "purge", "lock", "read_note", "write_note", "transport"):
            setattr(self, name, getattr(self._files, name))

    def generate_key(self, identity):
        import dataclasses

        return dataclasses.replace(self._files.generate_key(identity), kind=self.kind)

    def put(self, identity, entry, *, issuer_cn):
        stored = self._files.put(identity, entry, issuer_cn=issuer_cn)
        self.kinds[stored.x5t_s256] = entry.key.kind
        return stored.replace(key=entry.key.kind)

    def find(self, identity, *, issuer_cn):
        found = self._files.find(identity, issuer_cn=issuer_cn)
        if found is None:
            return None
        return found.replace(key=self.kinds.get(found.x5t_s256, "file"))


def test_a_keyguard_floor_never_uses_a_stored_software_certificate_fake_keyguard_provider(
        emu, store_dir):
    software = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url)
    weak = software.get_certificate()
    assert weak.key == "file"
    store = _KeyGuardLikeStore(store_dir, "keyguard")
    client = ManagedIdentityClient(store=store, imds_endpoint=emu.imds_url,
                                   min_strength="keyguard")
    strong = client.get_certificate()
    assert strong.key == "keyguard" and strong.source == "imds"
    assert strong.x5t_s256 != weak.x5t_s256 and emu.count("issuecredential") == 2
    again = ManagedIdentityClient(store=store, imds_endpoint=emu.imds_url,
                                  min_strength="keyguard").get_certificate()
    assert again.x5t_s256 == strong.x5t_s256 and emu.count("issuecredential") == 2


def test_a_mint_that_can_only_make_a_weaker_key_fails_and_sends_no_csr_fake_keyguard_provider(
        emu, store_dir):
    store = _KeyGuardLikeStore(store_dir, "keyguard")
    client = ManagedIdentityClient(store=store, imds_endpoint=emu.imds_url,
                                   min_strength="keyguard")
    store.kind = "software-ksp"  # VBS went away after the floor was checked
    with pytest.raises(MinStrengthNotMet, match="the store made a software-ksp key"):
        client.get_certificate()
    assert emu.count("issuecredential") == 0
