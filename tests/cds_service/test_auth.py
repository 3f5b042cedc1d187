"""Client authentication: the JWT rules, the JWKS sources, replay, optional mode, logging."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient

from cds_service.auth import (
    CLOCK_SKEW_S,
    FAILURE_MESSAGE,
    JwksCache,
)
from cds_service.config import ConfigError
from cds_service.errors import ClientAuthenticationFailed
from cds_service.fhir_client import allowed_fhir_servers
from cds_service.settings import Settings, app_settings
from tests.builders import order_sign_request, patient_and_coverage_prefetch
from tests.cds_service.conftest import JwksServer
from tests.conftest import ORDER_SIGN, make_app
from tests.misbehaving_fhir_server import MisbehavingFhirServer
from tests.served_process import ServedProcess, free_port
from tests.signing_keys import SigningKey

ISSUER = "https://ehr.example.org"
OTHER_ISSUER = "https://other-ehr.example.net"
PUBLIC_URL = "https://cds.example.org"
ENDPOINT = f"{PUBLIC_URL}{ORDER_SIGN}"


@dataclass(frozen=True)
class Keys:
    """The trusted client's ES384 and RS384 keys, and an attacker's."""

    es384: SigningKey
    rs384: SigningKey
    attacker: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Keys generated once for the module (RSA generation is slow)."""
    return Keys(
        es384=SigningKey("ec-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
        rs384=SigningKey("rsa-1", "RS384", rsa.generate_private_key(65537, 2048)),
        attacker=SigningKey("ec-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": ENDPOINT, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any] | None = None, **header: Any) -> str:
    headers = {"kid": key.kid, "typ": "JWT", **header}
    return jwt.encode(payload or claims(), key.private_key, algorithm=key.alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: alg none, or HMAC keyed with a public key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def auth_app(issuers: dict[str, Any], **settings: Any) -> Flask:
    return make_app(
        {"AUTH": "required", "PUBLIC_URL": PUBLIC_URL, "TRUSTED_ISSUERS": issuers, **settings}
    )


@pytest.fixture
def app_with_inline_keys(keys: Keys, jwks_server: JwksServer) -> Flask:
    """Auth required; the trusted issuer's keys inline, one jku allowlisted."""
    jwks_server.sets["/allowed-jwks"] = {"keys": [keys.es384.public_jwk]}
    attacker_only = SigningKey("attacker-1", "ES384", keys.attacker.private_key)
    jwks_server.sets["/attacker-jwks"] = {
        "keys": [keys.attacker.public_jwk, attacker_only.public_jwk]
    }
    issuers = {
        ISSUER: {
            "jwks": {"keys": [keys.es384.public_jwk, keys.rs384.public_jwk]},
            "jku": [jwks_server.url("/allowed-jwks")],
        },
        OTHER_ISSUER: {"jwks": {"keys": []}},
    }
    return auth_app(issuers)


def call(client: FlaskClient, token: str | None, header: str | None = None) -> Any:
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = order_sign_request("p1", prefetch=patient_and_coverage_prefetch("p1"))
    return client.post(ORDER_SIGN, json=body, headers=headers)


# --- good tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["es384", "rs384"])
def test_good_token_is_accepted(app_with_inline_keys: Flask, keys: Keys, which: str) -> None:
    response = call(app_with_inline_keys.test_client(), sign(getattr(keys, which)))
    assert response.status_code == 200, response.json


def test_aud_may_be_a_list_holding_the_endpoint(app_with_inline_keys: Flask, keys: Keys) -> None:
    token = sign(keys.es384, claims(aud=[ENDPOINT]))
    assert call(app_with_inline_keys.test_client(), token).status_code == 200


def test_allowlisted_jku_supplies_the_key(
    app_with_inline_keys: Flask, keys: Keys, jwks_server: JwksServer
) -> None:
    token = sign(keys.es384, jku=jwks_server.url("/allowed-jwks"))
    assert call(app_with_inline_keys.test_client(), token).status_code == 200
    assert jwks_server.fetches["/allowed-jwks"] == 1


# --- attacks --------------------------------------------------------------------------

Attack = Callable[[Keys, JwksServer], "str | tuple[None, str] | None"]


def _other_service_aud(k: Keys, _: JwksServer) -> str:
    other = f"{PUBLIC_URL}/cds-services/infusion-pump-coverage-order-select"
    return sign(k.es384, claims(aud=other))


# Each attack, and the reason the service must log for it (so each fails for its own cause).
ATTACKS: dict[str, tuple[Attack, str]] = {
    "no Authorization header": (lambda k, s: None, "no bearer token"),
    "Basic instead of Bearer": (lambda k, s: (None, "Basic dXNlcjpwYXNz"), "no bearer token"),
    "empty Bearer": (lambda k, s: (None, "Bearer "), "no bearer token"),
    "malformed token": (lambda k, s: "not.a-jwt", "malformed token"),
    "garbage base64": (lambda k, s: "eyJhbGciOi.eyJpc3Mi.c2ln", "malformed token"),
    "alg none, unsigned": (
        lambda k, s: forge({"alg": "none", "typ": "JWT", "kid": k.es384.kid}, claims(), None),
        "algorithm 'none' not accepted",
    ),
    "HS256 keyed with the public key": (
        lambda k, s: forge(
            {"alg": "HS256", "typ": "JWT", "kid": k.rs384.kid}, claims(), k.rs384.public_pem
        ),
        "algorithm 'HS256' not accepted",
    ),
    "signed with another key, trusted kid": (
        lambda k, s: sign(k.attacker),
        "InvalidSignatureError",
    ),
    "attacker key embedded in the jwk header": (
        lambda k, s: sign(k.attacker, jwk=k.attacker.public_jwk),
        "InvalidSignatureError",
    ),
    "unknown kid": (
        lambda k, s: sign(SigningKey("nobody", "ES384", k.es384.private_key)),
        "unknown kid",
    ),
    "no kid": (
        lambda k, s: jwt.encode(
            claims(), k.es384.private_key, algorithm="ES384", headers={"typ": "JWT"}
        ),
        "no kid",
    ),
    "RS384 token naming the EC key": (
        lambda k, s: sign(SigningKey(k.es384.kid, "RS384", k.rs384.private_key)),
        "key is not for the token's algorithm",
    ),
    "ES256 token on a P-384 key": (
        lambda k, s: sign(
            SigningKey(k.es384.kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
        ),
        "key is not for the token's algorithm",
    ),
    "typ not JWT": (lambda k, s: sign(k.es384, typ="at+jwt"), "typ is not JWT"),
    "expired": (
        lambda k, s: sign(k.es384, claims(exp=int(time.time()) - 120, iat=int(time.time()) - 400)),
        "ExpiredSignatureError",
    ),
    "iat in the future": (
        lambda k, s: sign(k.es384, claims(iat=int(time.time()) + 600, exp=int(time.time()) + 900)),
        "ImmatureSignatureError",
    ),
    "lives too long": (
        lambda k, s: sign(k.es384, claims(exp=int(time.time()) + 7200)),
        "token lives too long",
    ),
    "aud of another service": (_other_service_aud, "InvalidAudienceError"),
    "aud of discovery": (
        lambda k, s: sign(k.es384, claims(aud=f"{PUBLIC_URL}/cds-services")),
        "InvalidAudienceError",
    ),
    "aud on another host": (
        lambda k, s: sign(k.es384, claims(aud=f"https://evil.example.com{ORDER_SIGN}")),
        "InvalidAudienceError",
    ),
    "unknown iss": (
        lambda k, s: sign(k.es384, claims(iss="https://evil.example.com")),
        "issuer not trusted",
    ),
    "trusted iss without that key": (
        lambda k, s: sign(k.es384, claims(iss=OTHER_ISSUER)),
        "unknown kid",
    ),
    "jku not allowlisted, trusted kid": (
        lambda k, s: sign(k.attacker, jku=s.url("/attacker-jwks")),
        "InvalidSignatureError",
    ),
    "jku not allowlisted, kid only there": (
        lambda k, s: sign(
            SigningKey("attacker-1", "ES384", k.attacker.private_key), jku=s.url("/attacker-jwks")
        ),
        "unknown kid",
    ),
    "missing jti": (lambda k, s: sign(k.es384, claims(jti=None)), "MissingRequiredClaimError"),
    "missing exp": (lambda k, s: sign(k.es384, claims(exp=None)), "MissingRequiredClaimError"),
    "missing iat": (lambda k, s: sign(k.es384, claims(iat=None)), "MissingRequiredClaimError"),
    "missing iss": (lambda k, s: sign(k.es384, claims(iss=None)), "no iss"),
    "missing aud": (lambda k, s: sign(k.es384, claims(aud=None)), "MissingRequiredClaimError"),
    "numeric jti": (lambda k, s: sign(k.es384, claims(jti=12345)), "InvalidJTIError"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused_with_a_bare_401(
    app_with_inline_keys: Flask,
    keys: Keys,
    jwks_server: JwksServer,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    make_token, reason = ATTACKS[attack]
    made = make_token(keys, jwks_server)
    caplog.set_level(logging.INFO, logger="cds_service.auth")
    client = app_with_inline_keys.test_client()
    response = call(client, None, made[1]) if isinstance(made, tuple) else call(client, made)
    assert response.status_code == 401
    assert response.json == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "security", "diagnostics": FAILURE_MESSAGE}],
    }
    assert jwks_server.fetches.get("/attacker-jwks") is None
    logged = [r.getMessage() for r in caplog.records if r.name == "cds_service.auth"]
    assert len(logged) == 1
    assert logged[0].startswith("client authentication failed: ")
    assert reason in logged[0]


def test_replayed_jti_is_refused(app_with_inline_keys: Flask, keys: Keys) -> None:
    client = app_with_inline_keys.test_client()
    token = sign(keys.es384)
    assert call(client, token).status_code == 200
    assert call(client, token).status_code == 401
    # The same jti from a fresh token is a replay too.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert call(client, sign(keys.es384, claims(jti=jti))).status_code == 401


def test_replay_cache_is_injectable(app_with_inline_keys: Flask, keys: Keys) -> None:
    remembered: list[tuple[str, str, float]] = []

    class RefuseEverything:
        def remember(self, jti: str, iss: str, expires_at: float) -> bool:
            remembered.append((jti, iss, expires_at))
            return False

    app_with_inline_keys.extensions["cds_replay_cache"] = RefuseEverything()
    token = sign(keys.es384)
    assert call(app_with_inline_keys.test_client(), token).status_code == 401
    payload = jwt.decode(token, options={"verify_signature": False})
    # Kept until the token can no longer pass the exp check: exp plus the clock skew.
    assert remembered == [(payload["jti"], ISSUER, float(payload["exp"]) + CLOCK_SKEW_S)]


def test_replay_is_caught_by_another_worker_sharing_the_database(
    keys: Keys, tmp_path: Path
) -> None:
    """Two app instances (gunicorn workers, or replicas) on one database: a token
    accepted by one is a replay for the other."""
    issuers = {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}}
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first, second = (auth_app(issuers, DATABASE_URL=database) for _ in range(2))
    token = sign(keys.es384)
    assert call(first.test_client(), token).status_code == 200
    assert call(second.test_client(), token).status_code == 401


def test_replay_cache_database_down_refuses_with_503(keys: Keys, tmp_path: Path) -> None:
    """Without its replay cache the service cannot tell a replay from a new token: it
    refuses the call (503, try again), never lets it through and never answers 500."""
    issuers = {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}}
    app = auth_app(issuers, DATABASE_URL=f"sqlite:///{tmp_path / 'gone' / 'db.sqlite3'}")
    response = call(app.test_client(), sign(keys.es384))
    assert response.status_code == 503
    assert response.json["resourceType"] == "OperationOutcome"


# --- JWKS from a URL --------------------------------------------------------------------


def test_jwks_url_is_fetched_once_and_cached(keys: Keys, jwks_server: JwksServer) -> None:
    jwks_server.sets["/jwks"] = {"keys": [keys.es384.public_jwk]}
    app = auth_app({ISSUER: {"jwks_url": jwks_server.url("/jwks")}})
    client = app.test_client()
    for _ in range(3):
        assert call(client, sign(keys.es384)).status_code == 200
    assert jwks_server.fetches["/jwks"] == 1


def test_unknown_kid_refreshes_the_jwks_at_a_limited_rate(
    keys: Keys, jwks_server: JwksServer
) -> None:
    jwks_server.sets["/jwks"] = {"keys": [keys.es384.public_jwk]}
    app = auth_app({ISSUER: {"jwks_url": jwks_server.url("/jwks")}}, JWKS_REFRESH_INTERVAL_S=60.0)
    client = app.test_client()
    assert call(client, sign(keys.es384)).status_code == 200
    jwks_server.sets["/jwks"] = {"keys": [keys.es384.public_jwk, keys.rs384.public_jwk]}
    for _ in range(3):  # a flood of unknown kids does not hammer the issuer
        assert call(client, sign(keys.rs384)).status_code == 401
    assert jwks_server.fetches["/jwks"] == 1


def test_rotated_key_is_found_by_refreshing(keys: Keys, jwks_server: JwksServer) -> None:
    jwks_server.sets["/jwks"] = {"keys": [keys.es384.public_jwk]}
    app = auth_app({ISSUER: {"jwks_url": jwks_server.url("/jwks")}}, JWKS_REFRESH_INTERVAL_S=0.05)
    client = app.test_client()
    assert call(client, sign(keys.es384)).status_code == 200
    jwks_server.sets["/jwks"] = {"keys": [keys.rs384.public_jwk]}
    time.sleep(0.1)
    assert call(client, sign(keys.rs384)).status_code == 200
    assert jwks_server.fetches["/jwks"] == 2


def test_unreachable_jwks_url_is_401_and_not_hammered(keys: Keys, jwks_server: JwksServer) -> None:
    app = auth_app({ISSUER: {"jwks_url": jwks_server.url("/missing")}})
    client = app.test_client()
    for _ in range(3):
        assert call(client, sign(keys.es384)).status_code == 401
    assert jwks_server.fetches["/missing"] == 1


def test_plain_http_jwks_url_off_loopback_is_never_fetched() -> None:
    """Refused at start-up, so never fetched (the JWKS fetch would refuse it too)."""
    with pytest.raises(ConfigError, match=f"{ISSUER!r} 'jwks_url' must be an https URL"):
        auth_app({ISSUER: {"jwks_url": "http://jwks.example.org/keys"}})
    with pytest.raises(ConfigError, match=f"{ISSUER!r} 'jku' must be a list of https URLs"):
        auth_app({ISSUER: {"jku": ["http://jwks.example.org/keys"]}})
    with pytest.raises(ClientAuthenticationFailed, match="neither https nor loopback"):
        JwksCache().keys("http://jwks.example.org/keys", refresh=False, refresh_interval_s=60)


# --- modes, discovery, the aud URL ----------------------------------------------------


def test_discovery_needs_no_token(app_with_inline_keys: Flask) -> None:
    assert app_with_inline_keys.test_client().get("/cds-services").status_code == 200


def test_aud_follows_the_request_host_without_public_url(keys: Keys) -> None:
    app = make_app(
        {
            "AUTH": "required",
            "TRUSTED_ISSUERS": {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}},
        }
    )
    client = app.test_client()
    token = sign(keys.es384, claims(aud=f"http://localhost{ORDER_SIGN}"))
    assert call(client, token).status_code == 200
    assert call(client, sign(keys.es384)).status_code == 401  # minted for PUBLIC_URL


def test_optional_mode_accepts_unsigned_and_untrusted_tokens(keys: Keys) -> None:
    app = make_app(
        {
            "AUTH": "optional",
            "PUBLIC_URL": PUBLIC_URL,
            "TRUSTED_ISSUERS": {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}},
        }
    )
    client = app.test_client()
    assert call(client, None).status_code == 200
    assert call(client, "not.a-jwt").status_code == 200
    sandbox = sign(keys.attacker, claims(iss="https://sandbox.cds-hooks.org"))
    assert call(client, sandbox).status_code == 200


def test_optional_mode_still_verifies_a_trusted_issuers_token(keys: Keys) -> None:
    app = make_app(
        {
            "AUTH": "optional",
            "PUBLIC_URL": PUBLIC_URL,
            "TRUSTED_ISSUERS": {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}},
        }
    )
    client = app.test_client()
    assert call(client, sign(keys.es384)).status_code == 200
    assert call(client, sign(keys.attacker)).status_code == 401
    assert call(client, sign(keys.es384, claims(exp=int(time.time()) - 300))).status_code == 401


def test_issuer_fhir_servers_list_replaces_the_default() -> None:
    settings = Settings.load(
        {
            "FHIR_SERVERS": ["https://default.example.org"],
            "TRUSTED_ISSUERS": {
                ISSUER: {"jwks": {"keys": []}, "fhir_servers": ["https://ehr.example.org"]},
                OTHER_ISSUER: {"jwks": {"keys": []}},
            },
        },
        environ={},
    )
    assert allowed_fhir_servers(settings, ISSUER) == ["https://ehr.example.org"]
    assert allowed_fhir_servers(settings, OTHER_ISSUER) == ["https://default.example.org"]
    assert allowed_fhir_servers(settings, None) == ["https://default.example.org"]


def test_issuer_may_only_send_us_to_its_own_fhir_servers(
    keys: Keys, fhir_faults: MisbehavingFhirServer
) -> None:
    app = auth_app(
        {
            ISSUER: {
                "jwks": {"keys": [keys.es384.public_jwk]},
                "fhir_servers": ["https://ehr.example.org/fhir"],
            }
        },
        FHIR_SERVERS=["http://127.0.0.1"],
    )
    body = order_sign_request(
        "p1", fhir_server=fhir_faults.base("ok"), prefetch=patient_and_coverage_prefetch("p1")
    )
    response = app.test_client().post(
        ORDER_SIGN, json=body, headers={"Authorization": f"Bearer {sign(keys.es384)}"}
    )
    assert response.status_code == 200
    assert fhir_faults.requests_seen == []


# --- logs -----------------------------------------------------------------------------


def test_tokens_never_reach_the_logs(
    keys: Keys, fhir_faults: MisbehavingFhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    access_token = "ehr-access-token-" + uuid.uuid4().hex
    app = auth_app(
        {ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}},
        FHIR_SERVERS=["http://127.0.0.1"],
        FHIR_DEADLINE_S=1.0,
        FHIR_CALL_TIMEOUT_S=0.5,
    )
    client = app.test_client()
    good, bad = sign(keys.es384), sign(keys.attacker)
    caplog.set_level(logging.DEBUG)
    for behaviour in ("ok", "status-401", "status-500", "redirect", "slow"):
        body = order_sign_request(
            "p1",
            fhir_server=fhir_faults.base(behaviour),
            access_token=access_token,
            prefetch=patient_and_coverage_prefetch("p1"),
        )
        token = sign(keys.es384)
        assert (
            client.post(
                ORDER_SIGN, json=body, headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
        assert (
            client.post(
                ORDER_SIGN, json=body, headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 401
        )
        assert token not in caplog.text
    for token in (good, bad, "not.a-jwt"):
        client.post(ORDER_SIGN, json={}, headers={"Authorization": f"Bearer {token}"})
    assert "client authentication failed" in caplog.text  # the reasons are logged ...
    assert any(s.authorization == f"Bearer {access_token}" for s in fhir_faults.requests_seen)
    for secret in (access_token, good, bad, good.split(".")[2], bad.split(".")[2]):
        assert secret not in caplog.text  # ... the tokens are not


def test_issuer_without_any_key_source_is_refused_at_start() -> None:
    with pytest.raises(ConfigError):
        Settings.load({"TRUSTED_ISSUERS": {ISSUER: {"fhir_servers": []}}}, environ={})
    assert Settings.load(
        {"TRUSTED_ISSUERS": {ISSUER: {"jku": ["https://ehr.example.org/k"]}}}, environ={}
    ).trusted_issuers


def test_trusted_issuers_from_a_file(tmp_path: Any, keys: Keys) -> None:
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({ISSUER: {"jwks": {"keys": [keys.es384.public_jwk]}}}))
    settings = Settings.load(environ={"CDS_TRUSTED_ISSUERS": str(path)})
    assert settings.trusted_issuers[ISSUER]["jwks"]["keys"][0]["kid"] == "ec-1"


@pytest.mark.parametrize(
    "behaviour", ["garbage", "huge", "trickle", "redirect", "status-500", "null", "slow"]
)
def test_misbehaving_jwks_host_means_401_in_time(
    keys: Keys, fhir_faults: MisbehavingFhirServer, behaviour: str
) -> None:
    fhir_faults.slow_s = 5
    app = auth_app({ISSUER: {"jwks_url": fhir_faults.base(behaviour) + "/jwks"}})
    started = time.monotonic()
    assert call(app.test_client(), sign(keys.es384)).status_code == 401
    assert time.monotonic() - started < 3.0


def test_issuer_fhir_servers_admit_its_server_without_a_default_list(
    keys: Keys, fhir_faults: MisbehavingFhirServer
) -> None:
    app = auth_app(
        {
            ISSUER: {
                "jwks": {"keys": [keys.es384.public_jwk]},
                "fhir_servers": [fhir_faults.base("ok")],
            }
        }
    )
    body = order_sign_request(
        "p1",
        fhir_server=fhir_faults.base("ok"),
        access_token="tok-9",
        prefetch=patient_and_coverage_prefetch("p1"),
    )
    response = app.test_client().post(
        ORDER_SIGN, json=body, headers={"Authorization": f"Bearer {sign(keys.es384)}"}
    )
    assert response.status_code == 200
    assert fhir_faults.requests_seen
    assert {s.authorization for s in fhir_faults.requests_seen} == {"Bearer tok-9"}
    # The same request unsigned falls back to CDS_FHIR_SERVERS, which is empty.
    fhir_faults.requests_seen.clear()
    optional = make_app(
        {"AUTH": "optional", "TRUSTED_ISSUERS": dict(app_settings(app).trusted_issuers)}
    )
    assert optional.test_client().post(ORDER_SIGN, json=body).status_code == 200
    assert fhir_faults.requests_seen == []


def test_numeric_string_iat_is_refused_not_500(app_with_inline_keys: Flask, keys: Keys) -> None:
    token = sign(keys.es384, claims(iat=str(int(time.time()))))
    response = call(app_with_inline_keys.test_client(), token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- the CDS Hooks sandbox ------------------------------------------------------------
# The public sandbox (github.com/cds-hooks/sandbox, src/retrieve-data-helpers/
# jwt-generator.js) signs every call with ES384 and the header
# {"alg": "ES384", "typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU}; its claims are
# iss, aud (the service URL called), exp = iat + 300, iat and jti. It publishes the P-384
# public key under that kid at SANDBOX_JKU. These tests sign with a key of their own
# under the same kid and serve it from loopback as the issuer's configured jwks_url: the
# token's jku (the sandbox's public URL) is not on any allowlist and must never be fetched.

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


@pytest.fixture(scope="module")
def sandbox_key() -> SigningKey:
    """A P-384 key under the sandbox's kid (the sandbox's own private key is not ours)."""
    return SigningKey(SANDBOX_KID, "ES384", ec.generate_private_key(ec.SECP384R1()))


def sandbox_token(key: SigningKey, aud: str = ENDPOINT, jku: str = SANDBOX_JKU) -> str:
    """A token of exactly the sandbox's shape: its header fields in its order, its claims."""
    now = int(time.time())
    payload = {
        "iss": SANDBOX_ISSUER,
        "aud": aud,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    header = {"alg": "ES384", "typ": "JWT", "kid": key.kid, "jku": jku}
    return jwt.encode(payload, key.private_key, algorithm="ES384", headers=header)


def test_sandbox_token_verifies_with_its_issuers_jwks_url(
    sandbox_key: SigningKey, jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.sets["/.well-known/jwks.json"] = {"keys": [sandbox_key.public_jwk]}
    app = auth_app({SANDBOX_ISSUER: {"jwks_url": jwks_server.url("/.well-known/jwks.json")}})
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="cds_service.auth")
    for _ in range(2):
        response = call(client, sandbox_token(sandbox_key))
        assert response.status_code == 200, response.json
        assert response.json["cards"]
    assert jwks_server.fetches == {"/.well-known/jwks.json": 1}
    assert not [r for r in caplog.records if r.name == "cds_service.auth"]


def test_sandbox_token_verifies_with_its_issuers_inline_keys(sandbox_key: SigningKey) -> None:
    app = auth_app({SANDBOX_ISSUER: {"jwks": {"keys": [sandbox_key.public_jwk]}}})
    assert call(app.test_client(), sandbox_token(sandbox_key)).status_code == 200


def test_sandbox_jku_equal_to_the_configured_jwks_url_is_that_url(
    sandbox_key: SigningKey, jwks_server: JwksServer
) -> None:
    """Configured as the README says (jwks_url = the sandbox's jku): one fetch, accepted."""
    url = jwks_server.url("/.well-known/jwks.json")
    jwks_server.sets["/.well-known/jwks.json"] = {"keys": [sandbox_key.public_jwk]}
    app = auth_app({SANDBOX_ISSUER: {"jwks_url": url}})
    assert call(app.test_client(), sandbox_token(sandbox_key, jku=url)).status_code == 200
    assert jwks_server.fetches == {"/.well-known/jwks.json": 1}


def test_sandbox_token_for_another_endpoint_or_another_key_is_refused(
    sandbox_key: SigningKey, keys: Keys
) -> None:
    app = auth_app({SANDBOX_ISSUER: {"jwks": {"keys": [sandbox_key.public_jwk]}}})
    client = app.test_client()
    other_service = f"{PUBLIC_URL}/cds-services/infusion-pump-coverage-order-select"
    assert call(client, sandbox_token(sandbox_key, aud=other_service)).status_code == 401
    impostor = SigningKey(SANDBOX_KID, "ES384", keys.attacker.private_key)
    assert call(client, sandbox_token(impostor)).status_code == 401


def test_listing_a_jku_keeps_the_configured_keys(
    keys: Keys, sandbox_key: SigningKey, jwks_server: JwksServer
) -> None:
    """An issuer with a jku allowlist and configured keys: tokens naming another jku, no
    jku, or an allowlisted jku whose set lacks the kid, all find the kid configured."""
    jwks_server.sets["/listed"] = {"keys": [keys.rs384.public_jwk]}
    jwks_server.sets["/configured"] = {"keys": [sandbox_key.public_jwk]}
    app = auth_app(
        {
            SANDBOX_ISSUER: {
                "jwks_url": jwks_server.url("/configured"),
                "jku": [jwks_server.url("/listed"), jwks_server.url("/down")],
            }
        }
    )
    client = app.test_client()
    assert call(client, sandbox_token(sandbox_key)).status_code == 200
    assert (
        call(client, sandbox_token(sandbox_key, jku=jwks_server.url("/listed"))).status_code == 200
    )
    assert call(client, sandbox_token(sandbox_key, jku=jwks_server.url("/down"))).status_code == 200
    no_jku = sign(sandbox_key, claims(iss=SANDBOX_ISSUER))
    assert call(client, no_jku).status_code == 200
    rs384 = sign(keys.rs384, claims(iss=SANDBOX_ISSUER), jku=jwks_server.url("/listed"))
    assert call(client, rs384).status_code == 200  # the listed jku still supplies its keys
    assert jwks_server.fetches["/configured"] == 1


def test_only_an_unlisted_jku_and_no_configured_keys_is_refused(
    sandbox_key: SigningKey, jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.sets["/.well-known/jwks.json"] = {"keys": [sandbox_key.public_jwk]}
    app = auth_app({SANDBOX_ISSUER: {"jku": [jwks_server.url("/listed")]}})
    caplog.set_level(logging.INFO, logger="cds_service.auth")
    token = sandbox_token(sandbox_key, jku=jwks_server.url("/.well-known/jwks.json"))
    assert call(app.test_client(), token).status_code == 401
    assert jwks_server.fetches == {}
    assert "issuer has no keys for this token" in caplog.text


SANDBOX_JWKS = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
PUBLIC_EC = {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "k"}


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"jku": SANDBOX_JWKS}, "jku"),
        ({"jku": [SANDBOX_JWKS, 7]}, "jku"),
        ({"jku": ["http://sandbox.cds-hooks.org/.well-known/jwks.json"]}, "jku"),
        ({"jwks_url": [SANDBOX_JWKS]}, "jwks_url"),
        ({"jwks_url": "http://sandbox.cds-hooks.org/.well-known/jwks.json"}, "jwks_url"),
        ({"jwks_url": "sandbox.cds-hooks.org/.well-known/jwks.json"}, "jwks_url"),
        ({"jwks": [{"kty": "EC"}]}, "jwks"),
        ({"jwks": {"kty": "EC"}}, "jwks"),
        ({"jwks": {"keys": ["ec-1"]}}, "jwks"),
        ({"jwks": {"keys": [{**PUBLIC_EC, "d": "private"}]}}, "jwks"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "jwks"),
        ({"jwks_url": SANDBOX_JWKS, "fhir_servers": "https://only.example.org"}, "fhir_servers"),
        (
            {"jwks_url": SANDBOX_JWKS, "fhir_servers": ["https://a.example.org", None]},
            "fhir_servers",
        ),
    ],
)
def test_issuer_key_source_of_the_wrong_shape_is_refused_at_start(
    entry: dict[str, Any], field: str
) -> None:
    """Trusted issuers are held to the rules backend clients are (a JWK Set of public keys,
    https or loopback key URLs); a jku or fhir_servers given as one string would be
    matched as a substring or dropped for the default list: refused, not guessed."""
    with pytest.raises(ConfigError) as raised:
        Settings.load({"TRUSTED_ISSUERS": {SANDBOX_ISSUER: entry}}, environ={})
    assert str(raised.value).startswith(f"CDS_TRUSTED_ISSUERS: {SANDBOX_ISSUER!r} '{field}'")


def test_issuer_key_sources_of_the_right_shape_load() -> None:
    entry = {
        "jwks": {"keys": [PUBLIC_EC]},
        "jwks_url": "http://localhost./jwks.json",
        "jku": [SANDBOX_JWKS, "http://127.0.0.1:8080/jwks.json"],
        "fhir_servers": ["https://ehr.example.org/fhir"],
    }
    settings = Settings.load({"TRUSTED_ISSUERS": {SANDBOX_ISSUER: entry}}, environ={})
    assert settings.trusted_issuers == {SANDBOX_ISSUER: entry}
    assert allowed_fhir_servers(settings, SANDBOX_ISSUER) == ["https://ehr.example.org/fhir"]


def test_served_service_accepts_the_sandbox_with_auth_required(
    sandbox_key: SigningKey, jwks_server: JwksServer, tmp_path: Path
) -> None:
    """``infusion-pump-cds serve`` configured as the README says for the sandbox (with the
    JWKS on loopback), called over HTTP with a sandbox-shaped token: decided; unsigned: 401."""
    jwks_server.sets["/.well-known/jwks.json"] = {"keys": [sandbox_key.public_jwk]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "CDS_AUTH": "required",
        "CDS_PUBLIC_URL": base,
        "CDS_TRUSTED_ISSUERS": json.dumps(
            {SANDBOX_ISSUER: {"jwks_url": jwks_server.url("/.well-known/jwks.json")}}
        ),
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
    }
    process = ServedProcess(env, port=port).start()
    try:
        body = order_sign_request("p1", prefetch=patient_and_coverage_prefetch("p1"))
        token = sandbox_token(sandbox_key, aud=f"{base}{ORDER_SIGN}")
        signed = requests.post(
            f"{base}{ORDER_SIGN}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert signed.status_code == 200, signed.text
        assert signed.json()["cards"]
        unsigned = requests.post(f"{base}{ORDER_SIGN}", json=body, timeout=10)
        assert unsigned.status_code == 401
        assert jwks_server.fetches == {"/.well-known/jwks.json": 1}
    finally:
        process.stop()
