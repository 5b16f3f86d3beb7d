"""Options grouped as urllib3 groups them: one ``Timeouts`` per network leg (the only way to
give a timeout), one way to choose a store."""

from __future__ import annotations

import argparse
import math
import pickle
import warnings

import pytest

from msicert import ManagedIdentityClient, Timeouts
from msicert._frozen import FrozenInstanceError
from msicert._timeouts import DEFAULT_ESTS_TIMEOUTS, DEFAULT_IMDS_TIMEOUTS
from msicert.backends.posix._file_store import FileStore


def test_the_defaults_are_the_documented_ones(store_dir, monkeypatch):
    monkeypatch.delenv("MSICERT_IMDS_RETRY_SCALE", raising=False)  # the suite shortens waits
    c = ManagedIdentityClient(store_dir=store_dir)
    assert c.imds_timeouts == Timeouts(connect=2.0, read=10.0, total=None) == DEFAULT_IMDS_TIMEOUTS
    assert c.ests_timeouts == Timeouts(connect=5.0, read=30.0, total=60.0) == DEFAULT_ESTS_TIMEOUTS
    assert c.mint_budget == 332.0  # no IMDS total: the retry policy's worst case


def test_timeouts_is_a_frozen_value_changed_by_replace():
    t = DEFAULT_IMDS_TIMEOUTS.replace(total=30.0)
    assert t == Timeouts(2.0, 10.0, 30.0) and DEFAULT_IMDS_TIMEOUTS.total is None
    assert hash(t) == hash(Timeouts(2.0, 10.0, 30.0)) and t != Timeouts(2.0, 10.0)
    assert repr(t) == "Timeouts(connect=2.0, read=10.0, total=30.0)"
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'read'"):
        t.read = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"Timeouts\.total"):
        t.replace(total=float("nan"))  # replace runs the checks again
    assert pickle.loads(pickle.dumps(t)) == t


@pytest.mark.parametrize(("fields", "name"), [
    ({"connect": math.nan, "read": 1.0}, "Timeouts.connect"),
    ({"connect": 1.0, "read": math.inf}, "Timeouts.read"),
    ({"connect": 1.0, "read": 0.0}, "Timeouts.read"),
    ({"connect": 1.0, "read": 1.0, "total": -1.0}, "Timeouts.total"),
    ({"connect": True, "read": 1.0}, "Timeouts.connect"),  # a bool is not a duration
])
def test_timeouts_refuse_durations_that_would_disable_their_bound(fields, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number of seconds > 0"):
        Timeouts(**fields)


def test_imds_timeouts_total_bounds_the_mint_and_the_lock_wait(store_dir):
    c = ManagedIdentityClient(store_dir=store_dir,
                              imds_timeouts=Timeouts(connect=1.0, read=2.0, total=20.0))
    assert (c.mint_budget, c.lock_wait) == (20.0, 50.0)


def test_ests_timeouts_reach_the_token_leg(make_client):
    t = Timeouts(connect=0.5, read=0.7, total=3.0)
    assert make_client(ests_timeouts=t)._tokens()._timeouts is t


@pytest.mark.parametrize("keyword", ["connect_timeout", "read_timeout", "deadline",
                                     "ests_connect_timeout", "ests_read_timeout",
                                     "ests_total_timeout", "renewal_backoff"])
def test_there_is_one_way_to_give_a_timeout(store_dir, keyword):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
        ManagedIdentityClient(store_dir=store_dir, **{keyword: 1.0})


def test_the_new_keywords_warn_about_nothing(store_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ManagedIdentityClient(store_dir=store_dir, imds_timeouts=Timeouts(1.0, 2.0, 3.0),
                              ests_timeouts=Timeouts(1.0, 2.0, None))


def test_the_cli_timeout_uses_the_new_keywords(store_dir):
    from msicert._cli import _client

    args = argparse.Namespace(client_id=None, object_id=None, resource_id=None,
                              store_dir=store_dir, store=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = _client(args, timeout=0.5)
    assert c.imds_timeouts == Timeouts(connect=0.5, read=10.0, total=0.5)
    assert c.ests_timeouts == Timeouts(connect=0.5, read=0.5, total=60.0)


# --- choosing a store: one obvious way ----------------------------------------------------------

@pytest.mark.parametrize("other", [{"store_dir": "/tmp/x"}, {"store_location": "current-user"}])
def test_a_store_object_and_a_store_keyword_is_an_error_naming_both(store_dir, other):
    (name,) = other
    with pytest.raises(ValueError, match=rf"^give store= or {name}=, not both"):
        ManagedIdentityClient(store=FileStore(store_dir), **other)


def test_a_store_directory_and_a_store_location_is_an_error_naming_both(store_dir):
    with pytest.raises(ValueError, match=r"^give store_dir= or store_location=, not both"):
        ManagedIdentityClient(store_dir=store_dir, store_location="local-machine")


def test_each_single_way_of_choosing_the_store_is_taken(store_dir, monkeypatch):
    monkeypatch.delenv("MSICERT_STORE_DIR", raising=False)
    given = FileStore(store_dir)
    assert ManagedIdentityClient(store=given).store is given
    assert ManagedIdentityClient(store_dir=store_dir).store.directory == given.directory
