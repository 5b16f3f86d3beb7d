"""A host clock behind IMDS's: a certificate whose NotBefore is ahead of this host's clock by
at most 15 minutes is accepted, stored and found again (one WARNING names the skew); beyond
that, the error names the skew and says to fix the clock."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from msicert import ImdsResponseError
from tests.conftest import ROOT, cli_env

RESOURCE = "https://vault.azure.net"


class Behind:
    """This host's clock, ``seconds`` behind the service's (the emulator keeps real time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> float:
        return time.time() - self.seconds


def test_ten_minutes_behind_five_calls_make_one_mint_and_one_warning(make_client, emu,
                                                                      caplog):
    with caplog.at_level(logging.WARNING, logger="msicert"):
        c = make_client(clock=Behind(600))
        certs = [c.get_certificate() for _ in range(5)]
    assert emu.count("issuecredential") == 1
    assert len({cert.x5t_s256 for cert in certs}) == 1
    skew = [r.getMessage() for r in caplog.records if "clock skew" in r.getMessage()]
    assert len(skew) == 1
    assert "9 min 00 s ahead of this host's clock" in skew[0] or \
        "8 min 59 s ahead" in skew[0]
    assert "fix the system clock" in skew[0]
    token = c.acquire_token(RESOURCE)  # ESTS judges validity by its own clock
    assert token.x5t_s256 == certs[0].x5t_s256


_LOOKUP = """
import json, sys, time
from msicert import ManagedIdentityClient
client = ManagedIdentityClient(store_dir=sys.argv[1], imds_endpoint=sys.argv[2],
                               clock=lambda: time.time() - float(sys.argv[3]))
cert = client.get_certificate()
print(json.dumps({"source": cert.source, "x5t": cert.x5t_s256}))
"""


def test_the_next_process_with_the_same_clock_gets_a_store_hit(make_client, emu, store_dir):
    first = make_client(clock=Behind(600)).get_certificate()
    out = subprocess.run([sys.executable, "-c", _LOOKUP, store_dir, emu.imds_url, "600"],
                         capture_output=True, text=True, env=cli_env(), cwd=str(ROOT),
                         timeout=60, check=True)
    hit = json.loads(out.stdout)
    assert hit == {"source": "store", "x5t": first.x5t_s256}
    assert emu.count("issuecredential") == 1


def test_the_store_lookup_accepts_fifteen_minutes_and_not_more(make_client, emu):
    cert = make_client().get_certificate()
    lag = cert.not_before_ts - time.time()  # about -60 s: the emulator backdates
    inside = make_client(clock=Behind(900 - 1 + lag + 60))
    assert inside.get_certificate().source == "store"
    emu.reset()
    outside = make_client(clock=Behind(900 + 60 + 60))  # NotBefore 16 min ahead: not usable
    with pytest.raises(ImdsResponseError, match="fix the system clock"):
        outside.get_certificate()
    assert emu.count("issuecredential") == 1  # it looked for a new one, which is refused too


def test_beyond_fifteen_minutes_the_error_names_the_skew_and_the_fix(make_client, emu,
                                                                     store_dir):
    with pytest.raises(ImdsResponseError) as err:
        make_client(clock=Behind(1260)).get_certificate()  # NotBefore 20 min ahead
    text = str(err.value)
    assert "is 20 min 00 s ahead of this host's clock" in text or "19 min 59 s" in text
    assert "more than the 15 min 00 s tolerated; fix the system clock (NTP)" in text
    assert err.value.step == "issuecredential"
    import os

    assert not os.path.exists(os.path.join(store_dir, "msal_mtls.pem"))  # nothing stored


def test_a_clock_ahead_of_the_service_is_named_too(make_client, emu):
    emu.lifetime = 600.0
    with pytest.raises(ImdsResponseError, match=r"expired by this host's clock .* probably "
                                                r"ahead: fix the system clock"):
        make_client(clock=Behind(-3600)).get_certificate()
