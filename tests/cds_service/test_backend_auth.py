"""SMART Backend Services: the token endpoint's assertion and scope rules, the SMART
configuration, and the payer-scope check on routes (in process, across replicas, over HTTP)."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Blueprint, Flask, Response, jsonify
from flask.testing import FlaskClient
from jwt.warnings import InsecureKeyLengthWarning

from cds_service.backend_auth import (
    ACCESS_TOKEN_LIFETIME_S,
    ASSERTION_TYPE,
    CLOCK,
    current_backend_client,
    payer_scope_required,
    purge_expired_access_tokens,
    require_payer_scope,
)
from cds_service.config import ConfigError
from cds_service.errors import ServiceUnavailable
from cds_service.settings import Settings
from cds_service.tables import backend_access_token
from tests.cds_service.conftest import JwksServer
from tests.conftest import ROOT, make_app
from tests.served_process import ServedProcess, free_port
from tests.signing_keys import SigningKey

PUBLIC_URL = "https://payer.example.org"
TOKEN_URL = f"{PUBLIC_URL}/auth/token"
CLIENT = "dtr-client-1"
OTHER_CLIENT = "dtr-client-2"
SCOPES = "system/Questionnaire.rs system/ValueSet.rs"


@dataclass(frozen=True)
class Keys:
    """The registered client's RS384 and ES384 keys, another client's, and a stranger's."""

    rs384: SigningKey
    es384: SigningKey
    other_client: SigningKey
    stranger: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Keys generated once for the module (RSA generation is slow)."""
    return Keys(
        rs384=SigningKey("rsa-1", "RS384", rsa.generate_private_key(65537, 2048)),
        es384=SigningKey("ec-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
        other_client=SigningKey("other-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
        # Same kid as the client's EC key: only the signature can tell it apart.
        stranger=SigningKey("ec-1", "ES384", ec.generate_private_key(ec.SECP384R1())),
    )


def clients_config(keys: Keys) -> dict[str, Any]:
    return {
        CLIENT: {
            "jwks": {"keys": [keys.rs384.public_jwk, keys.es384.public_jwk]},
            "scopes": ["system/Questionnaire.rs", "system/ValueSet.rs", "system/Library.rs"],
        },
        OTHER_CLIENT: {
            "jwks": {"keys": [keys.other_client.public_jwk]},
            "scopes": ["system/ValueSet.rs"],
        },
    }


probe = Blueprint("payer_probe", __name__)


@probe.get("/fhir/probe/Questionnaire")
@payer_scope_required("Questionnaire")
def probe_questionnaire() -> Response:
    client = current_backend_client()
    return jsonify({"client": client.client_id if client else None})


@probe.get("/fhir/probe/ValueSet")
def probe_value_set() -> Response:
    refusal = require_payer_scope("ValueSet")
    if refusal is not None:
        return refusal
    client = current_backend_client()
    return jsonify({"client": client.client_id if client else None})


def with_probe(app: Flask) -> Flask:
    app.register_blueprint(probe)
    return app


def payer_app(keys: Keys, **settings: Any) -> Flask:
    """The service with auth required, both clients registered, the probe routes added."""
    config = {
        "AUTH": "required",
        "PUBLIC_URL": PUBLIC_URL,
        "BACKEND_CLIENTS": clients_config(keys),
        **settings,
    }
    return with_probe(make_app(config))


@pytest.fixture
def app(keys: Keys) -> Flask:
    """Auth required, in-memory store."""
    return payer_app(keys)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of that app."""
    return app.test_client()


def assertion(
    key: SigningKey,
    *,
    header: dict[str, Any] | None = None,
    now: float | None = None,
    **overrides: Any,
) -> str:
    """A client assertion as SMART Backend Services shapes it; ``None`` drops a claim."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": TOKEN_URL,
        "exp": issued + 240,
        "iat": issued,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    payload = {k: v for k, v in claims.items() if v is not None}
    headers = {"kid": key.kid, "typ": "JWT", **(header or {})}
    return jwt.encode(payload, key.private_key, algorithm=key.alg, headers=headers)


def token_form(client_assertion: str | None, **overrides: str | None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPES,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        **overrides,
    }
    return {k: v for k, v in form.items() if v is not None}


def ask_token(client: FlaskClient, form: dict[str, str]) -> Any:
    return client.post("/auth/token", data=form)


def refused(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    assert response.headers["Cache-Control"] == "no-store"


def token_for(client: FlaskClient, key: SigningKey, scope: str = SCOPES, **claims: Any) -> str:
    response = ask_token(client, token_form(assertion(key, **claims), scope=scope))
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- issuing tokens --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rs384", "es384"])
def test_good_assertion_gets_a_bearer_token(client: FlaskClient, keys: Keys, which: str) -> None:
    response = ask_token(client, token_form(assertion(getattr(keys, which))))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == ACCESS_TOKEN_LIFETIME_S == 300
    assert body["scope"] == SCOPES
    assert len(body["access_token"]) >= 40
    used = client.get("/fhir/probe/Questionnaire", headers=bearer(body["access_token"]))
    assert used.status_code == 200
    assert used.get_json() == {"client": CLIENT}


def test_only_the_tokens_hash_is_stored(app: Flask, client: FlaskClient, keys: Keys) -> None:
    token = token_for(client, keys.es384)
    with app.extensions["cds_store"].reading() as connection:
        rows = connection.execute(sa.select(backend_access_token)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["client_id"] == CLIENT
    assert rows[0]["scopes"] == SCOPES
    assert token not in json.dumps({k: str(v) for k, v in rows[0].items()})
    assert (rows[0]["expires_at"] - rows[0]["issued_at"]).total_seconds() == 300


def test_aud_may_be_a_list_holding_the_token_url(client: FlaskClient, keys: Keys) -> None:
    response = ask_token(client, token_form(assertion(keys.es384, aud=["other", TOKEN_URL])))
    assert response.status_code == 200


def test_client_id_parameter_matching_iss_is_accepted(client: FlaskClient, keys: Keys) -> None:
    response = ask_token(client, token_form(assertion(keys.es384), client_id=CLIENT))
    assert response.status_code == 200
    refused(
        ask_token(client, token_form(assertion(keys.es384), client_id=OTHER_CLIENT)),
        401,
        "invalid_client",
    )


def test_aud_follows_the_request_base_without_a_public_url(keys: Keys) -> None:
    client = payer_app(keys, PUBLIC_URL="").test_client()
    here = "http://localhost/auth/token"
    assert ask_token(client, token_form(assertion(keys.es384, aud=here))).status_code == 200
    refused(ask_token(client, token_form(assertion(keys.es384))), 401, "invalid_client")


# --- the assertion matrix ----------------------------------------------------------------


def _hs256(keys: Keys) -> str:
    now = int(time.time())
    claims = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": now + 60, "jti": "h"}
    return jwt.encode(
        claims, "a shared secret known to both sides", algorithm="HS256", headers={"kid": "ec-1"}
    )


def _alg_none(keys: Keys) -> str:
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT", "kid": "ec-1"}
    claims = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": now + 60, "jti": "n"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _tampered(keys: Keys) -> str:
    """A good assertion whose payload was changed after signing (a longer exp)."""
    head, _payload, signature = assertion(keys.es384).split(".")
    now = int(time.time())
    claims = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": now + 200, "jti": "t"}
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


BAD_ASSERTIONS: dict[str, Callable[[Keys], str]] = {
    "expired": lambda k: assertion(k.es384, exp=int(time.time()) - 120),
    "exp too far ahead": lambda k: assertion(k.es384, exp=int(time.time()) + 600),
    "exp not a number": lambda k: assertion(k.es384, exp="soon"),
    "no exp": lambda k: assertion(k.es384, exp=None),
    "no jti": lambda k: assertion(k.es384, jti=None),
    "iat in the future": lambda k: assertion(k.es384, iat=int(time.time()) + 600),
    "wrong aud": lambda k: assertion(k.es384, aud=f"{PUBLIC_URL}/fhir"),
    "aud of another service": lambda k: assertion(k.es384, aud="https://evil.example/auth/token"),
    "no aud": lambda k: assertion(k.es384, aud=None),
    "unknown client": lambda k: assertion(k.es384, iss="stranger", sub="stranger"),
    "iss is not sub": lambda k: assertion(k.es384, sub="someone-else"),
    "no sub": lambda k: assertion(k.es384, sub=None),
    "bad signature": lambda k: assertion(k.stranger),
    "tampered payload": _tampered,
    "key of another client": lambda k: assertion(k.other_client),
    "another client's kid with own key": lambda k: assertion(
        SigningKey("other-1", "ES384", k.es384.private_key)
    ),
    "unknown kid": lambda k: assertion(SigningKey("nope", "ES384", k.es384.private_key)),
    "no kid": lambda k: jwt.encode(
        {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "k"},
        k.es384.private_key,
        algorithm="ES384",
    ),
    "RSA key named by an EC kid": lambda k: assertion(
        SigningKey("ec-1", "RS384", k.rs384.private_key)
    ),
    "HS256": _hs256,
    "alg none": _alg_none,
    "typ not JWT": lambda k: assertion(k.es384, header={"typ": "at+jwt"}),
    "jku not registered": lambda k: assertion(
        k.es384, header={"jku": "https://evil.example/jwks.json"}
    ),
    "not a JWT": lambda k: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(BAD_ASSERTIONS))
def test_bad_assertion_is_invalid_client(client: FlaskClient, keys: Keys, case: str) -> None:
    response = ask_token(client, token_form(BAD_ASSERTIONS[case](keys)))
    refused(response, 401, "invalid_client")


def test_error_descriptions_say_what_is_wrong(client: FlaskClient, keys: Keys) -> None:
    wrong_aud = ask_token(client, token_form(assertion(keys.es384, aud="https://x.example")))
    assert TOKEN_URL in wrong_aud.get_json()["error_description"]
    expired = ask_token(client, token_form(assertion(keys.es384, exp=int(time.time()) - 600)))
    assert "expired" in expired.get_json()["error_description"]
    far = ask_token(client, token_form(assertion(keys.es384, exp=int(time.time()) + 3600)))
    assert "five minutes" in far.get_json()["error_description"]


def test_short_rsa_key_is_refused(keys: Keys) -> None:
    weak = SigningKey("rsa-weak", "RS384", rsa.generate_private_key(65537, 1024))
    clients = {CLIENT: {"jwks": {"keys": [weak.public_jwk]}, "scopes": ["system/ValueSet.rs"]}}
    client = payer_app(keys, BACKEND_CLIENTS=clients).test_client()
    with warnings.catch_warnings():  # PyJWT warns when signing with it, too
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        form = token_form(assertion(weak), scope="system/ValueSet.rs")
    refused(ask_token(client, form), 401, "invalid_client")


def test_exp_five_minutes_ahead_is_accepted(client: FlaskClient, keys: Keys) -> None:
    response = ask_token(client, token_form(assertion(keys.es384, exp=int(time.time()) + 300)))
    assert response.status_code == 200


def test_replayed_jti_is_refused(client: FlaskClient, keys: Keys) -> None:
    once = assertion(keys.es384)
    assert ask_token(client, token_form(once)).status_code == 200
    refused(ask_token(client, token_form(once)), 401, "invalid_client")
    # The same jti in a new assertion is a replay too.
    jti = jwt.decode(once, options={"verify_signature": False})["jti"]
    refused(ask_token(client, token_form(assertion(keys.rs384, jti=jti))), 401, "invalid_client")


def test_forged_assertion_does_not_spend_the_jti(client: FlaskClient, keys: Keys) -> None:
    """Only a verified assertion's jti is remembered: a forger cannot block the client's."""
    jti = str(uuid.uuid4())
    refused(ask_token(client, token_form(assertion(keys.stranger, jti=jti))), 401, "invalid_client")
    assert ask_token(client, token_form(assertion(keys.es384, jti=jti))).status_code == 200


# --- the request's form ------------------------------------------------------------------


def test_wrong_grant_type_is_unsupported(client: FlaskClient, keys: Keys) -> None:
    form = token_form(assertion(keys.es384), grant_type="authorization_code")
    refused(ask_token(client, form), 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    ("missing", "status", "error"),
    [
        ("grant_type", 400, "invalid_request"),
        ("scope", 400, "invalid_request"),
        ("client_assertion", 400, "invalid_request"),
        ("client_assertion_type", 400, "invalid_request"),
        ("both assertion fields", 401, "invalid_client"),
    ],
)
def test_missing_fields(
    client: FlaskClient, keys: Keys, missing: str, status: int, error: str
) -> None:
    form = token_form(assertion(keys.es384))
    for name in ("client_assertion", "client_assertion_type") if " " in missing else (missing,):
        del form[name]
    refused(ask_token(client, form), status, error)


def test_other_assertion_type_is_invalid_client(client: FlaskClient, keys: Keys) -> None:
    form = token_form(assertion(keys.es384), client_assertion_type="urn:example:saml")
    refused(ask_token(client, form), 401, "invalid_client")


def test_json_body_is_invalid_request(client: FlaskClient, keys: Keys) -> None:
    response = client.post("/auth/token", json=token_form(assertion(keys.es384)))
    refused(response, 400, "invalid_request")


def test_repeated_parameter_is_invalid_request(client: FlaskClient, keys: Keys) -> None:
    body = "&".join(
        f"{k}={requests.utils.quote(v, safe='')}"
        for k, v in token_form(assertion(keys.es384)).items()
    )
    response = client.post(
        "/auth/token",
        data=body + "&scope=system%2FLibrary.rs",
        content_type="application/x-www-form-urlencoded",
    )
    refused(response, 400, "invalid_request")


def test_overlong_scope_is_invalid_request(client: FlaskClient, keys: Keys) -> None:
    scope = " ".join(f"system/Questionnaire{'x' * n}.rs" for n in range(1, 80))
    refused(
        ask_token(client, token_form(assertion(keys.es384), scope=scope)), 400, "invalid_request"
    )


def test_database_down_is_503_and_nothing_issued(app: Flask, keys: Keys) -> None:
    class Unavailable:
        def remember(self, jti: str, iss: str, expires_at: float) -> bool:
            raise ServiceUnavailable.single("down")

    app.extensions["cds_replay_cache"] = Unavailable()
    response = ask_token(app.test_client(), token_form(assertion(keys.es384)))
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.get_json()


def test_get_is_not_allowed(client: FlaskClient) -> None:
    assert client.get("/auth/token").status_code == 405


# --- scopes ----------------------------------------------------------------------------


def test_no_scope_in_common_is_invalid_scope(client: FlaskClient, keys: Keys) -> None:
    form = token_form(assertion(keys.other_client, iss=OTHER_CLIENT, sub=OTHER_CLIENT))
    form["scope"] = "system/Questionnaire.rs system/Patient.rs launch"
    refused(ask_token(client, form), 400, "invalid_scope")


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        # DTR 2.0.1 spells them in lower case.
        (
            "system/questionnaire.rs system/valueset.rs system/library.rs",
            "system/questionnaire.rs system/valueset.rs system/library.rs",
        ),
        ("SYSTEM/QUESTIONNAIRE.RS", "SYSTEM/QUESTIONNAIRE.RS"),
        # SMART v1 spelling.
        ("system/Questionnaire.read", "system/Questionnaire.read"),
        # Only what the client may have; read-only never becomes more.
        ("system/Questionnaire.rs system/Patient.rs", "system/Questionnaire.rs"),
        ("system/Questionnaire.cruds system/ValueSet.r", "system/ValueSet.r"),
        ("system/*.rs system/Library.rs", "system/Library.rs"),
        ("system/ValueSet.rs  system/ValueSet.rs", "system/ValueSet.rs"),
    ],
)
def test_granted_scopes_are_the_intersection(
    client: FlaskClient, keys: Keys, requested: str, granted: str
) -> None:
    response = ask_token(client, token_form(assertion(keys.rs384), scope=requested))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["scope"] == granted


def test_a_wildcard_client_is_granted_what_it_asks(keys: Keys) -> None:
    clients = {CLIENT: {"jwks": {"keys": [keys.es384.public_jwk]}, "scopes": ["system/*.read"]}}
    client = payer_app(keys, BACKEND_CLIENTS=clients).test_client()
    token = token_for(client, keys.es384, scope="system/*.rs")
    assert client.get("/fhir/probe/Questionnaire", headers=bearer(token)).status_code == 200


# --- using tokens ------------------------------------------------------------------------


def test_token_of_a_v1_scope_opens_the_route(client: FlaskClient, keys: Keys) -> None:
    token = token_for(client, keys.es384, scope="system/questionnaire.read")
    assert client.get("/fhir/probe/Questionnaire", headers=bearer(token)).status_code == 200


def test_token_without_the_scope_is_403(client: FlaskClient, keys: Keys) -> None:
    token = token_for(client, keys.es384, scope="system/ValueSet.rs")
    assert client.get("/fhir/probe/ValueSet", headers=bearer(token)).status_code == 200
    response = client.get("/fhir/probe/Questionnaire", headers=bearer(token))
    assert response.status_code == 403
    assert response.mimetype == "application/fhir+json"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"
    assert "system/Questionnaire.rs" in outcome["issue"][0]["diagnostics"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def _is_401(response: Any) -> bool:
    outcome = response.get_json()
    return (
        response.status_code == 401
        and response.mimetype == "application/fhir+json"
        and outcome["resourceType"] == "OperationOutcome"
        and response.headers["WWW-Authenticate"].startswith("Bearer")
    )


def test_expired_token_is_401(app: Flask, client: FlaskClient, keys: Keys) -> None:
    token = token_for(client, keys.es384)
    later = time.time() + ACCESS_TOKEN_LIFETIME_S + 1
    app.extensions[CLOCK] = lambda: later
    response = client.get("/fhir/probe/Questionnaire", headers=bearer(token))
    assert _is_401(response)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_token_just_before_expiry_still_works(app: Flask, client: FlaskClient, keys: Keys) -> None:
    token = token_for(client, keys.es384)
    later = time.time() + ACCESS_TOKEN_LIFETIME_S - 5
    app.extensions[CLOCK] = lambda: later
    assert client.get("/fhir/probe/Questionnaire", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-token-we-issued",
        "Bearer " + "x" * 5000,
        "Basic ZHRyOnNlY3JldA==",
        "Bearer",
    ],
)
@pytest.mark.parametrize("auth", ["required", "optional"])
def test_unknown_token_is_401_in_either_mode(keys: Keys, header: str, auth: str) -> None:
    client = payer_app(keys, AUTH=auth).test_client()
    assert _is_401(client.get("/fhir/probe/Questionnaire", headers={"Authorization": header}))


def test_missing_token_is_401_when_required(client: FlaskClient) -> None:
    response = client.get("/fhir/probe/Questionnaire")
    assert _is_401(response)
    assert "error=" not in response.headers["WWW-Authenticate"]  # RFC 6750 section 3.1
    assert "/auth/token" in response.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/probe/ValueSet").status_code == 401


def test_missing_token_passes_with_a_warning_when_optional(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    client = payer_app(keys, AUTH="optional").test_client()
    with caplog.at_level(logging.WARNING, logger="cds_service.backend_auth"):
        response = client.get("/fhir/probe/Questionnaire")
    assert response.status_code == 200
    assert response.get_json() == {"client": None}
    assert any("CDS_AUTH=optional" in r.getMessage() for r in caplog.records)


def test_token_check_with_the_database_down_is_503(
    app: Flask, client: FlaskClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = token_for(client, keys.es384)
    store = app.extensions["cds_store"]

    def broken() -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "reading", broken)
    response = client.get("/fhir/probe/Questionnaire", headers=bearer(token))
    assert response.status_code == 503
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_token_of_a_client_no_longer_registered_is_401(tmp_path: Path, keys: Keys) -> None:
    """A replica restarted without the client (its registration withdrawn) refuses the
    tokens it was issued."""
    database = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    issuing = payer_app(keys, DATABASE_URL=database).test_client()
    token = token_for(issuing, keys.es384)
    remaining = {OTHER_CLIENT: clients_config(keys)[OTHER_CLIENT]}
    withdrawn = payer_app(keys, DATABASE_URL=database, BACKEND_CLIENTS=remaining).test_client()
    assert _is_401(withdrawn.get("/fhir/probe/Questionnaire", headers=bearer(token)))
    assert issuing.get("/fhir/probe/Questionnaire", headers=bearer(token)).status_code == 200


def test_token_of_one_client_names_that_client(client: FlaskClient, keys: Keys) -> None:
    token = token_for(
        client, keys.other_client, scope="system/ValueSet.rs", iss=OTHER_CLIENT, sub=OTHER_CLIENT
    )
    response = client.get("/fhir/probe/ValueSet", headers=bearer(token))
    assert response.get_json() == {"client": OTHER_CLIENT}


def test_token_is_valid_on_another_replica(make_service: Callable[..., Flask], keys: Keys) -> None:
    """Two instances on one database (SQLite file and PostgreSQL): a token from one opens
    the other, and an assertion used on one is a replay on the other."""
    settings = {
        "AUTH": "required",
        "PUBLIC_URL": PUBLIC_URL,
        "BACKEND_CLIENTS": clients_config(keys),
    }
    first = with_probe(make_service(**settings)).test_client()
    second = with_probe(make_service(**settings)).test_client()
    once = assertion(keys.rs384)
    response = ask_token(first, token_form(once))
    assert response.status_code == 200, response.get_data(as_text=True)
    token = response.get_json()["access_token"]
    assert second.get("/fhir/probe/Questionnaire", headers=bearer(token)).status_code == 200
    refused(ask_token(second, token_form(once)), 401, "invalid_client")


def test_expired_tokens_are_swept(make_service: Callable[..., Flask], keys: Keys) -> None:
    app = with_probe(
        make_service(AUTH="required", PUBLIC_URL=PUBLIC_URL, BACKEND_CLIENTS=clients_config(keys))
    )
    client = app.test_client()
    token_for(client, keys.es384)
    store = app.extensions["cds_store"]
    now = time.time()
    assert purge_expired_access_tokens(store, datetime.fromtimestamp(now, UTC)) == 0
    later = datetime.fromtimestamp(now + ACCESS_TOKEN_LIFETIME_S + 1, UTC)
    # The retention sweeper runs it with the rest of what expires.
    sweeper = app.extensions["cds_retention"]
    assert any(
        getattr(job, "func", None) is purge_expired_access_tokens for job in sweeper.expiring
    )
    assert purge_expired_access_tokens(store, later) == 1


# --- the JWK Set at a URL ------------------------------------------------------------------


def test_keys_at_a_jwks_url_are_fetched_once(keys: Keys, jwks_server: JwksServer) -> None:
    """A JWKS host on loopback (plain http is allowed there, as for trusted issuers)."""
    url = jwks_server.url("/jwks.json")
    jwks_server.sets["/jwks.json"] = {"keys": [keys.es384.public_jwk]}
    jwks_server.sets["/other.json"] = {"keys": [keys.stranger.public_jwk]}
    clients = {CLIENT: {"jwks_url": url, "scopes": ["system/Questionnaire.rs"]}}
    client = payer_app(keys, BACKEND_CLIENTS=clients).test_client()
    for _ in range(2):
        token_for(client, keys.es384, scope="system/Questionnaire.rs")
    # jku equal to the registered URL is that URL.
    form = token_form(assertion(keys.es384, header={"jku": url}))
    assert ask_token(client, form).status_code == 200
    assert jwks_server.fetches == {"/jwks.json": 1}
    refused(ask_token(client, token_form(assertion(keys.stranger))), 401, "invalid_client")
    # Any other jku, even on the same host, is refused and never fetched.
    other = token_form(assertion(keys.stranger, header={"jku": jwks_server.url("/other.json")}))
    refused(ask_token(client, other), 401, "invalid_client")
    assert jwks_server.fetches == {"/jwks.json": 1}


# --- configuration -------------------------------------------------------------------------


def test_clients_load_from_inline_json_or_a_file(keys: Keys, tmp_path: Path) -> None:
    text = json.dumps(clients_config(keys))
    inline = Settings.load(environ={"CDS_BACKEND_CLIENTS": text})
    path = tmp_path / "clients.json"
    path.write_text(text, encoding="utf-8")
    from_file = Settings.load(environ={"CDS_BACKEND_CLIENTS": str(path)})
    assert inline.backend_clients == from_file.backend_clients == clients_config(keys)
    assert Settings.load(environ={}).backend_clients == {}


PUBLIC_EC = {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "k"}


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ([], "must map each client id"),
        ({"c": "keys"}, "needs 'jwks' or 'jwks_url'"),
        ({"c": {"scopes": ["system/Questionnaire.rs"]}}, "needs 'jwks' or 'jwks_url'"),
        ({"c": {"jwks": [PUBLIC_EC], "scopes": ["system/ValueSet.rs"]}}, "must be a JWK Set"),
        (
            {"c": {"jwks": {"keys": [{**PUBLIC_EC, "d": "secret"}]}, "scopes": ["system/a.rs"]}},
            "private key",
        ),
        (
            {"c": {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "scopes": ["system/a.rs"]}},
            "secret",
        ),
        ({"c": {"jwks_url": "http://keys.example.org/jwks", "scopes": ["system/a.rs"]}}, "https"),
        ({"c": {"jwks_url": 42, "scopes": ["system/a.rs"]}}, "https"),
        ({"c": {"jwks": {"keys": []}}}, "'scopes'"),
        ({"c": {"jwks": {"keys": []}, "scopes": []}}, "'scopes'"),
        ({"c": {"jwks": {"keys": []}, "scopes": ["patient/Questionnaire.rs"]}}, "'scopes'"),
        ({"c": {"jwks": {"keys": []}, "scopes": "system/Questionnaire.rs"}}, "'scopes'"),
        ({"c": {"jwks": {"keys": []}, "scopes": ["system/a.rs"], "secret": "x"}}, "unknown keys"),
        ({"": {"jwks": {"keys": []}, "scopes": ["system/a.rs"]}}, "empty"),
    ],
)
def test_bad_client_registrations_stop_the_start(clients: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.load({"BACKEND_CLIENTS": clients}, environ={})
    assert "CDS_BACKEND_CLIENTS" in str(raised.value)


@pytest.mark.parametrize(
    "url", ["http://localhost./jwks", "http://[::1]:8080/jwks", "http://127.0.0.2/jwks"]
)
def test_a_loopback_jwks_url_is_a_registration(url: str) -> None:
    """Plain http to loopback is allowed for a client's keys as for a FHIR server: the same
    hosts (``localhost.`` too)."""
    clients = {"c": {"jwks_url": url, "scopes": ["system/Questionnaire.rs"]}}
    assert Settings.load({"BACKEND_CLIENTS": clients}, environ={}).backend_clients == clients


def test_unreadable_clients_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CDS_BACKEND_CLIENTS"):
        Settings.load(environ={"CDS_BACKEND_CLIENTS": str(tmp_path / "missing.json")})


def test_the_readme_registration_example_loads() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("export CDS_BACKEND_CLIENTS='", 1)[1].split("'", 1)[0]
    clients = Settings.load(environ={"CDS_BACKEND_CLIENTS": example}).backend_clients
    assert clients["ehr-dtr-app"]["scopes"] == [
        "system/Questionnaire.rs",
        "system/ValueSet.rs",
        "system/Library.rs",
    ]


def test_jwks_url_on_loopback_may_be_plain_http() -> None:
    clients = {"c": {"jwks_url": "http://127.0.0.1:9/jwks", "scopes": ["system/ValueSet.rs"]}}
    assert Settings.load({"BACKEND_CLIENTS": clients}, environ={}).backend_clients == clients


# --- discovery -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"]
)
def test_smart_configuration(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["token_endpoint"] == TOKEN_URL
    assert body["grant_types_supported"] == ["client_credentials"]
    assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert {"RS384", "ES384"} <= set(body["token_endpoint_auth_signing_alg_values_supported"])
    assert {s.lower() for s in body["scopes_supported"]} == {
        "system/questionnaire.rs",
        "system/valueset.rs",
        "system/library.rs",
    }
    assert "client-confidential-asymmetric" in body["capabilities"]


# --- what is logged ------------------------------------------------------------------------


def test_neither_assertion_nor_token_is_logged(
    client: FlaskClient, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    good = assertion(keys.es384)
    bad = assertion(keys.stranger)
    with caplog.at_level(logging.DEBUG):
        token = ask_token(client, token_form(good)).get_json()["access_token"]
        refused(ask_token(client, token_form(bad)), 401, "invalid_client")
        refused(ask_token(client, token_form(good)), 401, "invalid_client")
        client.get("/fhir/probe/Questionnaire", headers=bearer(token))
        client.get("/fhir/probe/Questionnaire", headers=bearer(token + "x"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "token request refused" in logged
    for secret in (good, bad, token, good.split(".")[2], token + "x"):
        assert secret not in logged


# --- over HTTP -------------------------------------------------------------------------------


def test_served_token_endpoint_and_a_replica_on_its_database(keys: Keys, tmp_path: Path) -> None:
    """``serve`` with the README's configuration: discovery, a token over HTTP, the token
    accepted by another instance on the same database, a replayed assertion refused; and,
    where this build has the payer operations, the operation itself takes the token."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    env = {
        "CDS_AUTH": "required",
        "CDS_PUBLIC_URL": base,
        "CDS_BACKEND_CLIENTS": json.dumps(clients_config(keys)),
        "CDS_DATABASE_URL": database,
    }
    process = ServedProcess(env, port=port).start()
    try:
        configuration = requests.get(f"{base}/fhir/.well-known/smart-configuration", timeout=10)
        assert configuration.status_code == 200
        token_url = configuration.json()["token_endpoint"]
        assert token_url == f"{base}/auth/token"
        once = assertion(keys.es384, aud=token_url)
        answer = requests.post(token_url, data=token_form(once), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Cache-Control"] == "no-store"
        token = answer.json()["access_token"]
        replayed = requests.post(token_url, data=token_form(once), timeout=10)
        assert replayed.status_code == 401
        assert replayed.json()["error"] == "invalid_client"

        replica = with_probe(
            make_app(
                {
                    "AUTH": "required",
                    "PUBLIC_URL": base,
                    "BACKEND_CLIENTS": clients_config(keys),
                    "DATABASE_URL": database,
                }
            )
        ).test_client()
        assert replica.get("/fhir/probe/Questionnaire", headers=bearer(token)).get_json() == {
            "client": CLIENT
        }

        package = "/fhir/Questionnaire/$questionnaire-package"
        served_rules = {rule.rule for rule in replica.application.url_map.iter_rules()}
        if package in served_rules:  # the payer operations are in this build
            unauthenticated = requests.post(
                f"{base}{package}", json={"resourceType": "Parameters"}, timeout=10
            )
            assert unauthenticated.status_code == 401, unauthenticated.text
            authenticated = requests.post(
                f"{base}{package}",
                json={"resourceType": "Parameters"},
                headers=bearer(token),
                timeout=10,
            )
            assert authenticated.status_code not in (401, 403), authenticated.text
    finally:
        process.stop()
