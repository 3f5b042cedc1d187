"""The JWT replay cache shared by worker processes and replicas."""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from jwt.algorithms import ECAlgorithm

from cds_service.auth import JwksCache, verify_client_token
from cds_service.errors import ClientAuthenticationFailed
from cds_service.replay import ReplayCache
from cds_service.settings import Settings
from cds_service.store import Store
from cds_service.tables import jwt_replay
from tests.cds_service.store_workers import remember_in_process

ISS = "https://ehr.example.org"
NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _kept(store: Store) -> list[tuple[str, str]]:
    with store.reading() as connection:
        return [
            tuple(r)
            for r in connection.execute(  # type: ignore[misc]
                sa.select(jwt_replay.c.iss, jwt_replay.c.jti).order_by(jwt_replay.c.jti)
            )
        ]


def test_a_jti_is_new_once_per_issuer(store: Store) -> None:
    cache = ReplayCache(store, _Clock(NOW))
    expires = NOW + timedelta(minutes=5)
    assert cache.remember("jti-1", ISS, expires.timestamp()) is True
    assert cache.remember("jti-1", ISS, expires.timestamp()) is False
    assert cache.remember("jti-1", "https://other.example.org", expires.timestamp()) is True
    assert cache.remember("jti-2", ISS, expires.timestamp()) is True


def test_expired_ids_are_purged_and_may_come_again(store: Store) -> None:
    clock = _Clock(NOW)
    cache = ReplayCache(store, clock)
    assert cache.remember("short", ISS, (NOW + timedelta(seconds=30)).timestamp()) is True
    assert cache.remember("long", ISS, (NOW + timedelta(hours=1)).timestamp()) is True
    clock.now = NOW + timedelta(minutes=1)
    assert cache.remember("other", ISS, (NOW + timedelta(hours=1)).timestamp()) is True
    assert _kept(store) == [(ISS, "long"), (ISS, "other")]
    assert cache.remember("short", ISS, (clock.now + timedelta(seconds=30)).timestamp()) is True
    assert cache.remember("long", ISS, (clock.now + timedelta(seconds=30)).timestamp()) is False


def test_an_expired_id_that_comes_again_first_is_new(store: Store) -> None:
    """The id whose row has expired is itself the one presented again (no other call has
    purged it yet): it is new, and kept until its new token expires."""
    clock = _Clock(NOW)
    cache = ReplayCache(store, clock)
    assert cache.remember("again", ISS, (NOW + timedelta(seconds=30)).timestamp()) is True
    assert cache.remember("stale", ISS, (NOW + timedelta(seconds=30)).timestamp()) is True
    clock.now = NOW + timedelta(minutes=1)
    renewed = clock.now + timedelta(minutes=5)
    assert cache.remember("again", ISS, renewed.timestamp()) is True
    assert _kept(store) == [(ISS, "again")]  # the other expired id purged
    assert cache.remember("again", ISS, renewed.timestamp()) is False
    clock.now = renewed - timedelta(seconds=1)
    assert cache.remember("again", ISS, (renewed + timedelta(minutes=5)).timestamp()) is False


def test_the_app_registers_the_cache_on_its_store(make_service: Callable[..., Flask]) -> None:
    app = make_service()
    cache = app.extensions["cds_replay_cache"]
    assert isinstance(cache, ReplayCache)
    assert cache.store is app.extensions["cds_store"]
    expires = datetime(2099, 1, 1, tzinfo=UTC)
    assert cache.remember("app-jti", ISS, expires.timestamp()) is True
    # A second app on the same database (another worker or replica) sees it.
    other = make_service().extensions["cds_replay_cache"]
    assert other.remember("app-jti", ISS, expires.timestamp()) is False


def test_only_one_of_several_processes_sees_a_jti_as_new(database_url: str, store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(4) as pool:
            pending = pool.starmap_async(
                remember_in_process, [(database_url, "raced-jti", start)] * 4
            )
            start.set()
            answers = pending.get(timeout=120)
    assert sorted(answers) == [False] * 3 + [True]
    assert _kept(store) == [(ISS, "raced-jti")]


def test_a_token_past_its_exp_but_within_the_skew_is_still_a_replay(store: Store) -> None:
    """A token is accepted up to CLOCK_SKEW_S after its exp, so its jti is kept that long:
    presented again in that window, it is a replay, not a new token."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
    settings = Settings.load({"TRUSTED_ISSUERS": {ISS: {"jwks": {"keys": [jwk]}}}}, environ={})
    endpoint = "https://cds.example.org/cds-services/x"
    now = time.time()
    claims = {
        "iss": ISS,
        "aud": endpoint,
        "exp": int(now) - 30,
        "iat": int(now) - 90,
        "jti": "late",
    }
    token = jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})
    cache = ReplayCache(store)
    verify = functools.partial(
        verify_client_token,
        token,
        settings,
        endpoint_url=endpoint,
        replay_cache=cache,
        jwks_cache=JwksCache(),
    )
    assert verify().jti == "late"
    with pytest.raises(ClientAuthenticationFailed, match="replayed"):
        verify()
