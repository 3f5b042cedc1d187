"""The documentation app's SMART EHR launch and callback, against the test authorization
server (authlib) over real HTTP: the happy path, and every way a sign-in is refused."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app
from cds_service.fhir_client import close_shared_session
from cds_service.smart_app import COOKIE, context_references, parse_app_context
from cds_service.smart_sessions import load_session
from demo.smart_server import SmartAuthorizationServer, serve_authorization_server
from tests.conftest import FIXTURES, ORDER_SIGN
from tests.dtr.loop import part
from tests.response_validation import validate_cds_response

CLIENT_ID = "documentation-app"


@pytest.fixture
def ehr() -> Iterator[SmartAuthorizationServer]:
    """The EHR's authorization server; no FHIR server behind it is reached here."""
    with serve_authorization_server("http://127.0.0.1:9", "unused") as server:
        server.register(CLIENT_ID, "http://localhost/dtr/callback")
        yield server
    close_shared_session()


def _app(ehr: SmartAuthorizationServer, **overrides: Any) -> Flask:
    config: dict[str, Any] = {
        "DATABASE_URL": "sqlite://",
        "FHIR_SERVERS": ["http://127.0.0.1"],
        "SMART_CLIENTS": {ehr.iss: {"client_id": CLIENT_ID}},
        "PUBLIC_URL": "http://localhost",
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(ehr: SmartAuthorizationServer) -> Flask:
    return _app(ehr)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _launch(client: FlaskClient, ehr: SmartAuthorizationServer, **context: Any) -> dict[str, Any]:
    launch = ehr.new_launch({"patient": "pat-1", "fhirContext": ["ServiceRequest/o1"], **context})
    answer = client.get(f"/dtr/launch?iss={ehr.iss}&launch={launch}")
    assert answer.status_code == 302, answer.data
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def _consent(ehr: SmartAuthorizationServer, query: dict[str, Any], decision: str) -> dict[str, str]:
    """The user at the EHR's consent page: Allow or Deny; the callback's parameters."""
    answer = requests.post(
        f"{ehr.base}/authorize", params=query, data={"decision": decision}, allow_redirects=False
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith("http://localhost/dtr/callback")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_launch_sends_the_browser_to_authorize_with_pkce_state_and_scopes(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    query = _launch(client, ehr)
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == "http://localhost/dtr/callback"
    assert query["aud"] == ehr.iss
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    assert query["scope"].split() == [
        "launch",
        "openid",
        "fhirUser",
        "patient/*.rs",
        "patient/QuestionnaireResponse.cu",
    ]
    cookie = client.get_cookie(COOKIE, path="/dtr/")
    assert cookie is not None
    assert cookie.http_only
    assert cookie.same_site == "Lax"
    assert ("GET", "/fhir/.well-known/smart-configuration?") in [
        (s["method"], s["path"]) for s in ehr.seen
    ]


def test_callback_exchanges_the_code_and_keeps_the_token_server_side(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    query = _launch(
        client,
        ehr,
        fhirContext=[{"reference": "ServiceRequest/o1"}, "Coverage/c1"],
        appContext='{"coverage-assertion-id": "a-1"}',
        fhirUser="Practitioner/dr-1",
    )
    session_id = client.get_cookie(COOKIE, path="/dtr/").value
    with app.app_context():
        pending = load_session(
            app.extensions["cds_store"], session_id, app.extensions["cds_clock"]()
        )
    assert pending is not None
    verifier = pending.data["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert query["code_challenge"] == challenge.decode()
    answer = client.get("/dtr/callback", query_string=_consent(ehr, query, "allow"))
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/dtr/form"
    issued = next(iter(ehr.tokens))
    assert issued not in answer.headers["Location"]
    assert issued.encode() not in answer.data
    assert all(issued not in c.value for c in [client.get_cookie(COOKIE, path="/dtr/")] if c)
    with app.app_context():
        session = load_session(
            app.extensions["cds_store"], session_id, app.extensions["cds_clock"]()
        )
    assert session is not None
    assert session.data["access_token"] == issued
    assert session.data["patient"] == "pat-1"
    assert session.data["fhir_user"] == "Practitioner/dr-1"
    assert context_references(session.data["fhir_context"]) == ["ServiceRequest/o1", "Coverage/c1"]
    assert parse_app_context(session.data["app_context"]) == {"coverage-assertion-id": "a-1"}
    assert "code_verifier" not in session.data


def test_an_issuer_not_configured_gets_an_error_page_and_is_not_contacted(
    ehr: SmartAuthorizationServer,
) -> None:
    client = _app(ehr, SMART_CLIENTS={}).test_client()
    answer = client.get(f"/dtr/launch?iss={ehr.iss}&launch=x")
    assert answer.status_code == 403
    assert answer.mimetype == "text/html"
    assert b"not registered" in answer.data
    assert "Location" not in answer.headers
    assert ehr.seen == []


def test_an_issuer_that_is_not_an_allowed_fhir_server_is_not_contacted(
    ehr: SmartAuthorizationServer,
) -> None:
    client = _app(ehr, FHIR_SERVERS=["https://ehr.example.org"]).test_client()
    answer = client.get(f"/dtr/launch?iss={ehr.iss}&launch=x")
    assert answer.status_code == 403
    assert ehr.seen == []


def test_a_launch_without_iss_and_launch_is_an_error_page(client: FlaskClient) -> None:
    answer = client.get("/dtr/launch")
    assert answer.status_code == 400
    assert answer.mimetype == "text/html"
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


def test_a_wrong_state_is_refused_and_the_code_not_exchanged(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    query = _launch(client, ehr)
    callback = _consent(ehr, query, "allow")
    answer = client.get("/dtr/callback", query_string={**callback, "state": "forged"})
    assert answer.status_code == 400
    assert b"does not belong to this browser" in answer.data
    assert not ehr.tokens  # no code exchanged
    # The genuine answer still works once; replayed, it is refused.
    assert client.get("/dtr/callback", query_string=callback).status_code == 303
    replayed = client.get("/dtr/callback", query_string=callback)
    assert replayed.status_code in (400, 401)


def test_a_callback_without_a_launch_in_this_browser_is_an_expired_session(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    other = client.application.test_client()
    query = _launch(other, ehr)
    answer = client.get("/dtr/callback", query_string=_consent(ehr, query, "allow"))
    assert answer.status_code == 401
    assert b"Open the documentation app again" in answer.data


def test_denied_consent_is_an_error_page(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    query = _launch(client, ehr)
    callback = _consent(ehr, query, "deny")
    assert callback["error"] == "access_denied"
    answer = client.get("/dtr/callback", query_string=callback)
    assert answer.status_code == 403
    assert b"access denied" in answer.data
    assert not ehr.tokens


def test_a_wrong_pkce_verifier_is_refused_by_the_authorization_server(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    query = _launch(client, ehr)
    session_id = client.get_cookie(COOKIE, path="/dtr/").value
    store = app.extensions["cds_store"]
    with app.app_context():
        session = load_session(store, session_id, app.extensions["cds_clock"]())
        assert session is not None
        session.data["code_verifier"] = "x" * 64  # not the one the challenge was made from
        from cds_service.smart_sessions import save_session

        save_session(store, session)
    answer = client.get("/dtr/callback", query_string=_consent(ehr, query, "allow"))
    assert answer.status_code == 502
    assert b"could not be exchanged" in answer.data
    assert not ehr.tokens


def test_v1_scopes_where_the_server_knows_only_those(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    ehr.scopes_supported = ["launch", "openid", "fhirUser", "patient/*.read"]
    query = _launch(client, ehr)
    assert "patient/*.read" in query["scope"].split()
    assert "patient/QuestionnaireResponse.write" in query["scope"].split()


def test_fhir_context_entries_as_strings_and_objects() -> None:
    assert context_references(
        ["DeviceRequest/a", {"reference": "Coverage/b", "role": "coverage"}, {"type": "X"}, 3]
    ) == ["DeviceRequest/a", "Coverage/b"]
    assert parse_app_context('{"coverage-assertion-id": "x"}') == {"coverage-assertion-id": "x"}
    assert parse_app_context("not json") == {}


CONDITIONAL_REQUEST = (
    FIXTURES / "requests" / "order-sign__eip-csii-insulin-lispro__conditional.json"
)


def _sign(app: Flask, **extension: Any) -> dict[str, Any]:
    body = json.loads(CONDITIONAL_REQUEST.read_text(encoding="utf-8"))
    body.setdefault("extension", {}).update(extension)
    answer = app.test_client().post(ORDER_SIGN, json=body)
    assert answer.status_code == 200, answer.get_json()
    response = dict(answer.get_json())
    validate_cds_response(response, hook="order-sign")
    return response


def _app_links(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        link
        for card in response["cards"]
        for link in card.get("links", [])
        if link.get("type") == "smart"
    ]


def test_the_documentation_card_links_to_the_app_when_the_payer_turns_it_on(
    ehr: SmartAuthorizationServer,
) -> None:
    response = _sign(_app(ehr, AUTH="optional", DTR_CARD_LINK="on"))
    links = _app_links(response)
    assert len(links) == 1
    link = links[0]
    assert link["label"] == "Complete the documentation"
    assert link["url"] == "http://localhost/dtr/launch"
    documentation = next(c for c in response["cards"] if link in c.get("links", []))
    assert documentation["source"]["topic"]["code"] == "claim"
    context = json.loads(link["appContext"])
    extension = next(
        e
        for action in response["systemActions"]
        for e in action["resource"]["extension"]
        if e["url"].endswith("ext-coverage-information")
    )
    assert context["coverage-assertion-id"] == part(extension, "coverage-assertion-id")
    assert context["questionnaire"] == part(extension, "questionnaire")
    assert context["orders"] == [
        f"{a['resource']['resourceType']}/{a['resource']['id']}" for a in response["systemActions"]
    ]


def test_no_app_link_by_default_nor_when_the_request_turns_it_off(
    ehr: SmartAuthorizationServer,
) -> None:
    assert _app_links(_sign(_app(ehr, AUTH="optional"))) == []
    turned_off = _sign(
        _app(ehr, AUTH="optional", DTR_CARD_LINK="on"),
        **{"davinci-crd.configuration": {"dtr-app-link": False}},
    )
    assert _app_links(turned_off) == []
    assert any(c["source"]["topic"]["code"] == "claim" for c in turned_off["cards"])


def _exchange_works(app: Flask, ehr: SmartAuthorizationServer) -> None:
    client = app.test_client()
    query = _launch(client, ehr)
    answer = client.get("/dtr/callback", query_string=_consent(ehr, query, "allow"))
    assert answer.status_code == 303, answer.get_data(as_text=True)


def test_a_confidential_client_with_a_secret(ehr: SmartAuthorizationServer) -> None:
    ehr.register("confidential-app", "http://localhost/dtr/callback", secret="s3cret-value")
    registration = {"client_id": "confidential-app", "client_secret": "s3cret-value"}
    _exchange_works(_app(ehr, SMART_CLIENTS={ehr.iss: registration}), ehr)
    wrong = {"client_id": "confidential-app", "client_secret": "not-it"}
    app = _app(ehr, SMART_CLIENTS={ehr.iss: wrong})
    client = app.test_client()
    query = _launch(client, ehr)
    assert (
        client.get("/dtr/callback", query_string=_consent(ehr, query, "allow")).status_code == 502
    )


def test_a_confidential_client_with_a_key_publishes_its_jwks_and_signs_its_assertion(
    ehr: SmartAuthorizationServer,
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key)), "kid": "k1", "alg": "ES384"}
    app = _app(
        ehr, SMART_CLIENTS={ehr.iss: {"client_id": "keyed-app", "jwks_private_key": private}}
    )
    published = app.test_client().get("/dtr/.well-known/jwks.json").get_json()
    assert published["keys"] == [{k: v for k, v in private.items() if k != "d"}]
    ehr.register(
        "keyed-app",
        "http://localhost/dtr/callback",
        jwks=lambda: app.test_client().get("/dtr/.well-known/jwks.json").get_json(),
    )
    _exchange_works(app, ehr)
    # Another key than the one published: the EHR refuses the assertion.
    other = {
        **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()))),
        "kid": "k1",
        "alg": "ES384",
    }
    impostor = _app(
        ehr, SMART_CLIENTS={ehr.iss: {"client_id": "keyed-app", "jwks_private_key": other}}
    )
    client = impostor.test_client()
    query = _launch(client, ehr)
    assert (
        client.get("/dtr/callback", query_string=_consent(ehr, query, "allow")).status_code == 502
    )


def test_over_https_the_session_cookie_is_secure_and_survives_an_embedding_frame(
    ehr: SmartAuthorizationServer,
) -> None:
    app = _app(
        ehr,
        PUBLIC_URL="https://payer.example.org",
        SMART_CLIENTS={
            ehr.iss: {"client_id": CLIENT_ID, "frame_origins": ["https://ehr.example.org"]}
        },
    )
    client = app.test_client()
    launch = ehr.new_launch({"patient": "pat-1"})
    answer = client.get(f"/dtr/launch?iss={ehr.iss}&launch={launch}")
    assert answer.status_code == 302
    cookie = answer.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/dtr/"):
        assert attribute in cookie
    assert (
        "redirect_uri=https%3A%2F%2Fpayer.example.org%2Fdtr%2Fcallback"
        in answer.headers["Location"]
        or "redirect_uri=https://payer.example.org/dtr/callback" in answer.headers["Location"]
    )
    policy = client.get("/dtr/launch").headers["Content-Security-Policy"]
    assert "frame-ancestors http://127.0.0.1:" in policy
    assert "https://ehr.example.org" in policy


def _sign_in(client: FlaskClient, ehr: SmartAuthorizationServer) -> Any:
    """A launch, the user allowing it at the EHR, and the app's answer to the callback."""
    query = _launch(client, ehr)
    return client.get("/dtr/callback", query_string=_consent(ehr, query, "allow"))


def test_the_callback_reads_neither_the_configuration_again_nor_the_keys_each_time(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    for _ in range(2):
        assert _sign_in(client, ehr).status_code == 303
    paths = [s["path"] for s in ehr.seen if s["method"] == "GET"]
    # One read of the configuration per launch, none at the callback; the keys once.
    assert paths.count("/fhir/.well-known/smart-configuration?") == 2
    assert paths.count("/jwks?") == 1


def test_an_id_token_without_kid_is_verified_with_the_ehrs_only_key(
    client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    ehr.id_token_header = {"kid": None}
    assert _sign_in(client, ehr).status_code == 303


def _refused_sign_in(app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer) -> None:
    answer = _sign_in(client, ehr)
    assert answer.status_code == 401, answer.get_data(as_text=True)
    assert answer.mimetype == "text/html"
    assert b"Sign-in not accepted" in answer.data
    assert b"could not be verified" in answer.data
    assert "Location" not in answer.headers
    assert ehr.tokens  # the code was exchanged: the refusal is the app's own
    with app.app_context():
        session = load_session(
            app.extensions["cds_store"],
            client.get_cookie(COOKIE, path="/dtr/").value,
            app.extensions["cds_clock"](),
        )
    assert session is None or "access_token" not in session.data
    assert client.get("/dtr/form").status_code == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://attacker.example.org/fhir"},
        {"iss": "ISSUER/"},  # OIDC: the issuer exactly, not a URL like it
        {"iss": None},
        {"iss": ["ISSUER"]},
        {"aud": "another-app"},
        {"aud": None},
        {"azp": "another-app"},
        {"nonce": "not-this-launch"},
        {"nonce": None},
        {"exp": 1_000_000_000, "iat": 999_999_000},
        {"sub": None},
    ],
    ids=lambda claims: ",".join(f"{k}={v}" for k, v in claims.items()),
)
def test_an_id_token_with_a_wrong_claim_is_refused_with_a_sign_in_error_page(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer, claims: dict[str, Any]
) -> None:
    ehr.id_token_claims = json.loads(json.dumps(claims).replace("ISSUER", ehr.iss))
    _refused_sign_in(app, client, ehr)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": 5},
        {"alg": ["RS256"]},
        {"alg": None},
        {"alg": "none"},
        {"alg": "HS256"},  # the EHR's public key used as an HMAC secret
        {"alg": "RS512"},  # a strong algorithm, but not one the service accepts
        {"alg": "ES256"},  # the EHR's key is an RSA key for RS256
        {"alg": "ES384"},
        {"kid": "another-key"},
        {"kid": 5},
    ],
    ids=lambda header: ",".join(f"{k}={v}" for k, v in header.items()),
)
def test_an_id_token_with_an_algorithm_or_key_it_cannot_be_verified_with_is_refused(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer, header: dict[str, Any]
) -> None:
    ehr.id_token_header = header
    _refused_sign_in(app, client, ehr)


def test_an_id_token_signed_by_another_key_than_the_published_one_is_refused(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    assert _sign_in(client, ehr).status_code == 303  # the EHR's published key, now cached
    ehr.key = rsa.generate_private_key(65537, 2048)  # signs under the same kid from now on
    _refused_sign_in(app, client, ehr)


def test_the_id_token_iss_is_the_issuer_the_ehrs_configuration_names(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    ehr.oidc_issuer = f"{ehr.base}/oidc"  # not its FHIR base, as with many EHRs
    assert _sign_in(client, ehr).status_code == 303
    ehr.id_token_claims = {"iss": ehr.iss}  # the launch's iss is not the OIDC issuer
    _refused_sign_in(app, client, ehr)


def test_without_an_issuer_in_the_configuration_the_id_token_iss_is_the_launchs_iss(
    app: Flask, client: FlaskClient, ehr: SmartAuthorizationServer
) -> None:
    ehr.advertise_issuer = False
    assert _sign_in(client, ehr).status_code == 303
    ehr.id_token_claims = {"iss": f"{ehr.base}/oidc"}
    _refused_sign_in(app, client, ehr)
