"""The README's emulator example, verbatim: the emulator as a pytest fixture."""

import pytest

from msicert import ImdsError, ManagedIdentityClient
from msicert.emulator import Emulator, Fault


@pytest.fixture(scope="module")
def emu():
    with Emulator(lifetime=3600) as e:
        yield e


def test_forbidden_issuecredential_is_not_retried(emu, tmp_path):
    emu.inject("issuecredential", Fault(status=403))
    client = ManagedIdentityClient(store_dir=str(tmp_path), imds_endpoint=emu.imds_url)
    with pytest.raises(ImdsError) as err:
        client.get_certificate()
    assert err.value.status == 403 and emu.count("issuecredential") == 1
