"""Per-client rate limits: 429 + Retry-After + OperationOutcome for the client over its
rate, nobody else slowed; a forged token never spends another client's budget."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from cds_service.config import ConfigError
from cds_service.rate_limit import TokenBuckets
from cds_service.settings import Settings
from tests.conftest import FIXTURES, ORDER_SIGN, make_app

PUBLIC_URL = "https://cds.example.org"
ISSUER_A = "https://ehr-a.example.org"
ISSUER_B = "https://ehr-b.example.org"
BODY = (FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json").read_bytes()
BURST = 3


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = _Clock()
    buckets = TokenBuckets(2.0, 3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.wait_for("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another client is not affected
    clock.now += 0.5
    assert buckets.wait_for("a") == 0.0
    assert buckets.take("a") == 0.0
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills up to the burst only


def test_the_least_recently_seen_clients_are_forgotten_first() -> None:
    buckets = TokenBuckets(1.0, 1, clock=_Clock(), max_clients=2)
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")
    buckets.take("c")  # "b" is forgotten, "a" kept
    assert buckets.wait_for("a") > 0
    assert buckets.wait_for("b") == 0.0


def test_rate_limit_settings_are_checked() -> None:
    assert Settings.load({}, environ={"CDS_RATE_LIMIT_PER_S": "0"}).rate_limit_per_s == 0
    with pytest.raises(ConfigError):
        Settings.load({}, environ={"CDS_RATE_LIMIT_PER_S": "-1"})
    with pytest.raises(ConfigError):
        Settings.load({}, environ={"CDS_RATE_LIMIT_BURST": "0"})


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {issuer: ec.generate_private_key(ec.SECP384R1()) for issuer in (ISSUER_A, ISSUER_B)}


def _public_jwk(private_key: Any) -> dict[str, Any]:
    jwk = jwt.get_algorithm_by_name("ES384").to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": "k1", "alg": "ES384", "use": "sig"}


def _token(issuer: str, private_key: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": f"{PUBLIC_URL}{ORDER_SIGN}",
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, private_key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


@pytest.fixture
def limited_app(keys: dict[str, Any]) -> Flask:
    """Auth required, two trusted clients, a burst of 3 and a slow refill."""
    return make_app(
        {
            "AUTH": "required",
            "PUBLIC_URL": PUBLIC_URL,
            "TRUSTED_ISSUERS": {
                issuer: {"jwks": {"keys": [_public_jwk(key)]}} for issuer, key in keys.items()
            },
            "RATE_LIMIT_PER_S": 0.01,
            "RATE_LIMIT_BURST": BURST,
        }
    )


def _sign_call(client: FlaskClient, token: str | None, address: str = "10.0.0.1") -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(
        ORDER_SIGN, data=BODY, headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def _assert_throttled(response: Any) -> None:
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"


def test_a_client_over_its_rate_gets_429_and_the_others_are_answered(
    limited_app: Flask, keys: dict[str, Any]
) -> None:
    client = limited_app.test_client()
    for _ in range(BURST):
        assert _sign_call(client, _token(ISSUER_A, keys[ISSUER_A])).status_code == 200
    _assert_throttled(_sign_call(client, _token(ISSUER_A, keys[ISSUER_A])))
    # Another client, from the same address: its own budget.
    for _ in range(BURST):
        assert _sign_call(client, _token(ISSUER_B, keys[ISSUER_B])).status_code == 200
    # The throttled client is still throttled from any address (it is its iss).
    _assert_throttled(_sign_call(client, _token(ISSUER_A, keys[ISSUER_A]), "10.9.9.9"))


def test_feedback_counts_against_the_same_budget(limited_app: Flask, keys: dict[str, Any]) -> None:
    client = limited_app.test_client()
    for _ in range(BURST):
        assert _sign_call(client, _token(ISSUER_A, keys[ISSUER_A])).status_code == 200
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": ISSUER_A,
            "aud": f"{PUBLIC_URL}{ORDER_SIGN}/feedback",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        },
        keys[ISSUER_A],
        algorithm="ES384",
        headers={"kid": "k1", "typ": "JWT"},
    )
    response = client.post(
        f"{ORDER_SIGN}/feedback",
        json={"feedback": []},
        headers={"Authorization": f"Bearer {token}"},
    )
    _assert_throttled(response)


def test_forged_tokens_naming_a_client_do_not_spend_its_budget(
    limited_app: Flask, keys: dict[str, Any]
) -> None:
    client = limited_app.test_client()
    attacker_key = ec.generate_private_key(ec.SECP384R1())
    answers = [
        _sign_call(client, _token(ISSUER_A, attacker_key), "10.6.6.6").status_code
        for _ in range(BURST + 2)
    ]
    # Refused as unauthenticated, then throttled by the attacker's address.
    assert answers[:BURST] == [401] * BURST
    assert answers[BURST:] == [429, 429]
    # The real client still has its whole budget.
    for _ in range(BURST):
        assert _sign_call(client, _token(ISSUER_A, keys[ISSUER_A])).status_code == 200


def test_unsigned_calls_are_limited_by_address() -> None:
    app = make_app({"AUTH": "optional", "RATE_LIMIT_PER_S": 0.01, "RATE_LIMIT_BURST": 2})
    client = app.test_client()
    assert [_sign_call(client, None, "10.1.1.1").status_code for _ in range(3)] == [200, 200, 429]
    assert _sign_call(client, None, "10.2.2.2").status_code == 200
    # Discovery and the FHIR endpoints count too; health checks never do.
    _assert_throttled(client.get("/cds-services", environ_base={"REMOTE_ADDR": "10.1.1.1"}))


def test_the_forwarded_address_is_used_only_when_configured() -> None:
    headers = {"Content-Type": "application/json"}

    def statuses(app: Flask) -> list[int]:
        client = app.test_client()
        return [
            client.post(
                ORDER_SIGN,
                data=BODY,
                headers={**headers, "X-Forwarded-For": f"192.0.2.{n}"},
                environ_base={"REMOTE_ADDR": "127.0.0.1"},
            ).status_code
            for n in range(3)
        ]

    settings = {"AUTH": "optional", "RATE_LIMIT_PER_S": 0.01, "RATE_LIMIT_BURST": 2}
    # Not configured: the header is ignored, every call is the proxy's address.
    assert statuses(make_app(settings)) == [200, 200, 429]
    # One proxy trusted: each forwarded address has its own budget.
    assert statuses(make_app({**settings, "FORWARDED_FOR_HOPS": 1})) == [200, 200, 200]
