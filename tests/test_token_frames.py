"""No access token in any local of any frame of a failure.

Error reporters that capture local variables (Sentry and its kin) call ``repr`` on every local
of every frame in a traceback, the chained exceptions' included. Each test injects a failure
after ESTS's answer was parsed and walks those frames the same way.
"""

from __future__ import annotations

import sys
import types

import pytest

from msicert import AccessToken
from msicert._secret import Secret
from msicert.emulator import Fault
from msicert.wire._ests import TokenResponse, parse_token_response

RESOURCE = "https://vault.azure.net"


def _frames(exc: BaseException) -> list[types.FrameType]:
    frames, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename != __file__:  # not this test's own frames
                frames.append(tb.tb_frame)
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]
    return frames


def _leaks(exc: BaseException, secret: str) -> list[str]:
    """``function:local`` for every local whose repr shows ``secret`` (or its payload part)."""
    needles = [secret, secret.split(".")[1]]
    found = []
    for frame in _frames(exc):
        for name, value in frame.f_locals.items():
            try:
                text = repr(value)
            except Exception:  # a repr that fails shows nothing either
                continue
            if any(n in text for n in needles):
                found.append(f"{frame.f_code.co_name}:{name}")
    return found


def _minted(emu) -> set[str]:
    return set(emu._state._tokens)  # the emulator's record of the tokens its ESTS minted


def _new_token(emu, before: set[str]) -> str:
    (token,) = _minted(emu) - before
    return token


def test_a_failed_resource_call_leaves_no_token_in_any_frame(make_client, emu):
    before = _minted(emu)
    c = make_client()
    c.acquire_token(RESOURCE)  # the token is cached: the request below sends this one
    emu.inject("resource", Fault(kind="close_handshake", times=2))  # fails under urllib3
    with pytest.raises(Exception) as info:
        c.request("GET", f"{emu.ests_url}/resource", resource=RESOURCE)
    token = _new_token(emu, before)
    assert c.acquire_token(RESOURCE).access_token == token  # the header would have held it
    frames = [f.f_code.co_name for f in _frames(info.value)]
    assert "urlopen" in frames  # urllib3's frames (which held the header) are walked too
    assert _leaks(info.value, token) == []


def test_a_failure_right_after_the_token_is_parsed_leaves_no_token_in_any_frame(
        make_client, emu):
    class Boom(RuntimeError):
        pass

    def clock() -> float:  # fails when the parsed answer is turned into a cached token
        import time

        if sys._getframe(1).f_code.co_name == "_remember":
            raise Boom("injected failure after the ESTS answer was parsed")
        return time.time()

    before = _minted(emu)
    c = make_client(clock=clock)
    with pytest.raises(Boom) as info:
        c.acquire_token(RESOURCE)
    token = _new_token(emu, before)
    frames = [f.f_code.co_name for f in _frames(info.value)]
    assert "_fetch" in frames and "_remember" in frames  # where the parsed answer lives
    assert _leaks(info.value, token) == []


def test_a_malformed_answer_holding_a_token_leaves_it_in_no_frame(make_client, emu):
    emu.inject("token", Fault(kind="wrong_token_type"))
    c = make_client()
    c.get_certificate()
    before = _minted(emu)
    with pytest.raises(Exception) as info:
        c.acquire_token(RESOURCE)
    token = _new_token(emu, before)
    assert "request_token" in [f.f_code.co_name for f in _frames(info.value)]
    assert _leaks(info.value, token) == []


def test_token_response_and_access_token_reprs_redact_the_token():
    body = b'{"token_type":"mtls_pop","access_token":"a.c2VjcmV0.b","expires_in":3600}'
    resp = parse_token_response(200, Secret(body))
    assert isinstance(resp, TokenResponse) and resp.access_token.reveal() == "a.c2VjcmV0.b"
    assert "c2VjcmV0" not in repr(resp) and "c2VjcmV0" not in str(resp)
    token = AccessToken("a.c2VjcmV0.b", "mtls_pop", 1, "x5t", "cache")
    assert token.access_token == "a.c2VjcmV0.b"  # the public attribute stays a str
    assert "c2VjcmV0" not in repr(token)
