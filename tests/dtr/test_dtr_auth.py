"""The DTR operations under ``CDS_AUTH=required``: a SMART Backend Services token with
the scope each needs, else 401/403 with an OperationOutcome; the forms themselves and
the CapabilityStatement stay readable without one (no PHI; the card links to them)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from tests.cds_service.test_backend_auth import PUBLIC_URL, assertion, token_form
from tests.conftest import FIXTURES, make_app
from tests.signing_keys import SigningKey

FIXTURE = FIXTURES / "requests" / "order-sign__eip-csii-insulin-lispro__conditional.json"
CLIENT = "dtr-client-1"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("ec-1", "ES384", ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture
def client(key: SigningKey) -> FlaskClient:
    clients = {
        CLIENT: {
            "jwks": {"keys": [key.public_jwk]},
            "scopes": ["system/Questionnaire.rs", "system/ValueSet.rs"],
        }
    }
    config = {"AUTH": "required", "PUBLIC_URL": PUBLIC_URL, "BACKEND_CLIENTS": clients}
    return make_app(config).test_client()


def _token(client: FlaskClient, key: SigningKey, scope: str) -> str:
    reply = client.post("/auth/token", data=token_form(assertion(key), scope=scope))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return str(reply.get_json()["access_token"])


def _package_body() -> dict[str, object]:
    body = json.loads(FIXTURE.read_text())
    coverage = body["prefetch"]["coverage"]["entry"][0]["resource"]
    orders = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "coverage", "resource": coverage},
            *({"name": "order", "resource": order} for order in orders),
        ],
    }


def test_operations_need_a_token(client: FlaskClient) -> None:
    reply = client.post("/fhir/Questionnaire/$questionnaire-package", json=_package_body())
    assert reply.status_code == 401
    assert reply.get_json()["resourceType"] == "OperationOutcome"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    expand = client.get("/fhir/ValueSet/$expand", query_string={"url": "x"})
    assert expand.status_code == 401


def test_a_token_with_the_scope_is_served(client: FlaskClient, key: SigningKey) -> None:
    token = _token(client, key, "system/Questionnaire.rs")
    reply = client.post(
        "/fhir/Questionnaire/$questionnaire-package",
        json=_package_body(),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["parameter"][0]["name"] == "PackageBundle"


def test_a_token_without_the_scope_is_refused(client: FlaskClient, key: SigningKey) -> None:
    token = _token(client, key, "system/ValueSet.rs")
    headers = {"Authorization": f"Bearer {token}"}
    reply = client.post(
        "/fhir/Questionnaire/$questionnaire-package", json=_package_body(), headers=headers
    )
    assert reply.status_code == 403
    assert reply.get_json()["resourceType"] == "OperationOutcome"
    expand = client.get(
        "/fhir/ValueSet/$expand",
        query_string={"url": "http://infusion-pump-cds.org/fhir/ValueSet/pump-kind"},
        headers=headers,
    )
    assert expand.status_code == 200


def test_forms_and_metadata_need_no_token(client: FlaskClient) -> None:
    assert client.get("/fhir/metadata").status_code == 200
    assert (
        client.get("/fhir/Questionnaire/mcs051-infusion-pump-documentation-eip-csii").status_code
        == 200
    )
