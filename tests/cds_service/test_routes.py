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


# Context fields each hook defines as prefetch tokens (CDS Hooks hook library 1.0).
TOKEN_FIELDS = {
    "order-sign": {"userId", "patientId", "encounterId"},
    "order-select": {"userId", "patientId", "encounterId"},
    "order-dispatch": {"patientId", "performer"},
}
USER_TOKENS = {
    "userPractitionerId",
    "userPractitionerRoleId",
    "userPatientId",
    "userRelatedPersonId",
}


def test_prefetch_templates_are_valid_cds_hooks_2_0(client: FlaskClient) -> None:
    import re

    for service in client.get("/cds-services").json["services"]:
        for key, template in service["prefetch"].items():
            tokens = re.findall(r"{{\s*([^}]*?)\s*}}", template)
            assert tokens, key
            for token in tokens:
                field = token.removeprefix("context.")
                assert token in USER_TOKENS or field in TOKEN_FIELDS[service["hook"]], (key, token)
            assert "_include" not in template
            assert "{{" not in re.sub(r"{{[^}]*}}", "", template)


def test_discovery_entries_are_complete(client: FlaskClient) -> None:
    for service in client.get("/cds-services").json["services"]:
        assert service["title"]
        assert service["description"]
        assert service["usageRequirements"]
        options = service["extension"]["davinci-crd.configuration-options"]
        codes = [o["code"] for o in options]
        assert len(codes) == len(set(codes))
        assert {"coverage-info", "guideline", "claim", "max-cards"} <= set(codes)
        for option in options:
            assert {"code", "type", "name", "description", "default"} <= set(option)
            assert option["type"] in ("boolean", "integer")
        assert service["extension"]["davinci-crd.version"] == ["2.0", "2.1", "2.2"]
