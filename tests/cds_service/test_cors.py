"""CORS: only configured origins, echoed exactly, preflight answered, never a wildcard."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from cds_service.config import ConfigError
from cds_service.settings import Settings
from tests.conftest import ORDER_SIGN, make_app

SANDBOX = "https://sandbox.cds-hooks.org"


@pytest.fixture
def cors_client() -> FlaskClient:
    """The service with the CDS Hooks sandbox as its one allowed browser origin."""
    return make_app({"CORS_ORIGINS": [SANDBOX + "/"], "AUTH": "required"}).test_client()


def _preflight(client: FlaskClient, origin: str, path: str = ORDER_SIGN):  # noqa: ANN202
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_preflight_from_an_allowed_origin_is_answered(cors_client: FlaskClient) -> None:
    response = _preflight(cors_client, SANDBOX)
    assert response.status_code == 200  # before (and without) authentication
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX
    allowed_headers = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed_headers
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers["Vary"]


def test_preflight_of_discovery_is_answered(cors_client: FlaskClient) -> None:
    response = _preflight(cors_client, SANDBOX, "/cds-services")
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX


def test_actual_responses_carry_the_origin_even_when_refused(cors_client: FlaskClient) -> None:
    discovery = cors_client.get("/cds-services", headers={"Origin": SANDBOX})
    assert discovery.headers["Access-Control-Allow-Origin"] == SANDBOX
    refused = cors_client.post(ORDER_SIGN, json={}, headers={"Origin": SANDBOX})
    assert refused.status_code == 401  # the browser can read why
    assert refused.headers["Access-Control-Allow-Origin"] == SANDBOX


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://sandbox.cds-hooks.org",
        "https://sandbox.cds-hooks.org.evil.com",
        "null",
    ],
)
def test_other_origins_get_no_cors_headers(cors_client: FlaskClient, origin: str) -> None:
    for response in (
        _preflight(cors_client, origin),
        cors_client.get("/cds-services", headers={"Origin": origin}),
    ):
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Headers" not in response.headers
        assert "Origin" in response.headers["Vary"]


def test_never_a_wildcard_nor_credentials(cors_client: FlaskClient) -> None:
    for response in (
        _preflight(cors_client, SANDBOX),
        cors_client.get("/cds-services", headers={"Origin": SANDBOX}),
    ):
        assert response.headers.get("Access-Control-Allow-Origin") != "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_no_origins_configured_means_no_cors(client: FlaskClient) -> None:
    response = client.get("/cds-services", headers={"Origin": SANDBOX})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_wildcard_origin_is_refused_at_start() -> None:
    with pytest.raises(ConfigError):
        Settings.load(environ={"CDS_CORS_ORIGINS": "*"})
