"""HTTP surface: discovery, unknown services, error bodies."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.conftest import ORDER_SIGN


def test_discovery_lists_one_service_per_hook(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    hooks = [s["hook"] for s in response.json["services"]]
    assert sorted(hooks) == ["order-dispatch", "order-select", "order-sign"]


def test_unknown_service_is_404_operation_outcome(client: FlaskClient) -> None:
    response = client.post("/cds-services/no-such-service", json={})
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"
    assert "no-such-service" in response.json["issue"][0]["diagnostics"]


def test_unknown_path_is_404_operation_outcome(client: FlaskClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json["issue"][0]["code"] == "not-found"


def test_wrong_method_is_405_operation_outcome(client: FlaskClient) -> None:
    response = client.get(ORDER_SIGN)
    assert response.status_code == 405
    assert response.json["resourceType"] == "OperationOutcome"
