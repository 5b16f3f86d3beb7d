"""``msicert demo``: the whole story against an in-process emulator, in plain words."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from ._client import ManagedIdentityClient
from .backends.posix._trust import ENV_CA_BUNDLE

__all__ = ["run_demo"]


class _Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def run_demo() -> int:
    """Cold mint, warm store hit, renewal, token binding; returns 0 when every check held."""
    from .emulator import Emulator, decode_token_payload

    started = time.monotonic()
    store_dir = tempfile.mkdtemp(prefix="msicert-demo-")
    ok = True
    with Emulator(lifetime=7 * 86400.0, backdate=60.0) as emu:
        saved_trust = os.environ.get(ENV_CA_BUNDLE)
        os.environ[ENV_CA_BUNDLE] = emu.ca_file  # msicert (only) trusts the emulator's ESTS
        _say("setup", f"emulator: IMDS {emu.imds_url}, ESTS {emu.ests_url}; "
                      f"store {store_dir}")

        def imds_calls() -> int:
            return emu.count("getplatformmetadata") + emu.count("issuecredential")

        clock = _Clock()
        try:
            first = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url,
                                          clock=clock).get_certificate()
            _say("cold", f"no certificate anywhere: minted one through IMDS "
                         f"(source={first.source}, {imds_calls()} IMDS calls), "
                         f"x5t#S256 {first.x5t_s256}, "
                         f"valid until {first.not_after:%Y-%m-%d %H:%M}Z")
            ok &= first.source == "imds"

            before = imds_calls()
            second_client = ManagedIdentityClient(store_dir=store_dir,
                                                  imds_endpoint=emu.imds_url, clock=clock)
            warm = second_client.get_certificate()
            _say("warm", f"a new client found it in the store (source={warm.source}), "
                         f"{imds_calls() - before} IMDS calls, same certificate: "
                         f"{warm.x5t_s256 == first.x5t_s256}")
            ok &= warm.source == "store" and imds_calls() == before

            clock.offset = warm.renew_after_ts - time.time() + 1
            share = (warm.renew_after_ts - warm.not_before_ts) / (
                warm.not_after_ts - warm.not_before_ts)
            _say("renew", f"time moves to just past renew_after "
                          f"({warm.renew_after:%Y-%m-%d %H:%M}Z, "
                          f"{100 * share:.1f} % of the lifetime)")
            renewed = second_client.get_certificate()
            stored = second_client.status()
            _say("renew", f"renewed proactively (source={renewed.source}), new x5t#S256 "
                          f"{renewed.x5t_s256}; the store now holds only the new one: "
                          f"{stored is not None and stored.x5t_s256 == renewed.x5t_s256}")
            ok &= renewed.x5t_s256 != warm.x5t_s256 and stored is not None \
                and stored.x5t_s256 == renewed.x5t_s256

            clock.offset = 0.0
            token_client = ManagedIdentityClient(store_dir=store_dir, imds_endpoint=emu.imds_url)
            token = token_client.acquire_token("https://management.azure.com")
            cnf = decode_token_payload(token.access_token).get("cnf", {}).get("x5t#S256")
            cert_now = token_client.get_certificate()
            _say("token", f"mtls_pop token from ESTS over mTLS (source={token.source}); its "
                          f"cnf x5t#S256 equals the certificate: {cnf == cert_now.x5t_s256}")
            ok &= cnf == cert_now.x5t_s256 == token.x5t_s256
            again = token_client.acquire_token("https://management.azure.com")
            _say("token", f"second request served from the token cache (source={again.source})")
            resp = token_client.request("GET", f"{emu.ests_url}/resource",
                                        resource="https://management.azure.com")
            body = json.loads(resp.data)
            _say("call", f"resource over mTLS with 'Authorization: mtls_pop ...': HTTP "
                         f"{resp.status}, bound certificate accepted: {body.get('ok') is True}")
            ok &= resp.status == 200 and body.get("ok") is True
        finally:
            if saved_trust is None:
                os.environ.pop(ENV_CA_BUNDLE, None)
            else:
                os.environ[ENV_CA_BUNDLE] = saved_trust
            shutil.rmtree(store_dir, ignore_errors=True)
    _say("done", f"{'all checks held' if ok else 'SOME CHECKS FAILED'} in "
                 f"{time.monotonic() - started:.1f} s")
    return 0 if ok else 1
