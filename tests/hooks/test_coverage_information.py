"""The CRD coverage-information system action in each dialect, and only that change."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import FIXTURES, ORDER_SELECT, ORDER_SIGN, load_json
from tests.response_validation import validate_cds_response

EXTENSION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(load_json(FIXTURES / "requests" / f"{name}.json"))


def sign(
    client: FlaskClient, body: dict[str, Any], version: str | None = None, path: str = ORDER_SIGN
) -> dict[str, Any]:
    if version:
        body.setdefault("extension", {})["davinci-crd.requestedVersion"] = version
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    validate_cds_response(response.json, crd_version=version or "2.0", hook=body["hook"])
    return response.json  # type: ignore[no-any-return]


def coverage_parts(action: dict[str, Any]) -> list[dict[str, Any]]:
    (extension,) = [e for e in action["resource"]["extension"] if e["url"] == EXTENSION]
    return extension["extension"]  # type: ignore[no-any-return]


def values(parts: list[dict[str, Any]], url: str) -> list[Any]:
    return [
        next(v for k, v in p.items() if k.startswith("value"))
        for p in parts
        if p["url"] == url and any(k.startswith("value") for k in p)
    ]


def _assertion_for(coverage: str, covered: str) -> dict[str, Any]:
    return {
        "url": EXTENSION,
        "extension": [
            {"url": "coverage", "valueReference": {"reference": coverage}},
            {"url": "covered", "valueCode": covered},
            {"url": "reason", "valueCodeableConcept": {"text": "earlier assertion"}},
            {"url": "date", "valueDate": "2026-11-01"},
            {"url": "coverage-assertion-id", "valueString": f"earlier-{coverage}"},
        ],
    }


def test_update_changes_nothing_but_our_extension(client: FlaskClient) -> None:
    """Our earlier assertion on the order is replaced; an EHR extension and another
    payer's assertion (another Coverage) stay as they were (CRD resp-37, resp-46)."""
    body = fixture("order-sign__e0784-insulin__covered")
    other_payer = _assertion_for("Coverage/secondary-payer", "not-covered")
    body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = [
        {"url": "http://example.org/ehr-local", "valueString": "kept"},
        _assertion_for("Coverage/cov-ma-1", "conditional"),
        other_payer,
    ]
    answer = sign(client, body)
    originals = {
        e["resource"]["id"]: e["resource"] for e in body["context"]["draftOrders"]["entry"]
    }
    assert len(answer["systemActions"]) == len(originals)  # one update per in-scope order
    for action in answer["systemActions"]:
        assert action["type"] == "update"
        assert action["description"]
        resource = copy.deepcopy(action["resource"])
        original = copy.deepcopy(originals[resource["id"]])
        extensions = resource.pop("extension")
        ours = [e for e in extensions if e["url"] == EXTENSION and e != other_payer]
        assert len(ours) == 1
        assert values(ours[0]["extension"], "covered") == ["covered"]
        ehr_and_other_payer = [
            e for e in original.pop("extension", []) if e["url"] != EXTENSION or e == other_payer
        ]
        assert [e for e in extensions if e not in ours] == ehr_and_other_payer
        assert resource == original


def test_an_order_already_carrying_the_decision_gets_no_update(client: FlaskClient) -> None:
    """Sending our own answer back changes nothing, so no system action (resp-29/35)."""
    body = fixture("order-sign__e0784-insulin__covered")
    answer = sign(client, copy.deepcopy(body))
    updated = {a["resource"]["id"]: a["resource"] for a in answer["systemActions"]}
    for entry in body["context"]["draftOrders"]["entry"]:
        entry["resource"] = updated[entry["resource"]["id"]]
    again = client.post(ORDER_SIGN, json=body).json
    assert "systemActions" not in again or again["systemActions"] == []
    assert again["cards"]  # the guidance is still shown


def test_one_assertion_id_per_coverage_per_response(client: FlaskClient) -> None:
    answer = sign(client, fixture("order-sign__e0784-insulin__covered"))
    ids = {
        tuple(values(coverage_parts(a), "coverage-assertion-id")) for a in answer["systemActions"]
    }
    assert len(ids) == 1
    assert values(coverage_parts(answer["systemActions"][0]), "coverage") == [
        {"reference": "Coverage/cov-ma-1"}
    ]


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
def test_covered_answer_in_each_dialect(client: FlaskClient, version: str) -> None:
    parts = coverage_parts(
        sign(client, fixture("order-sign__e0784-insulin__covered"), version)["systemActions"][0]
    )
    assert values(parts, "covered") == ["covered"]
    assert values(parts, "pa-needed") == ["no-auth"]
    assert values(parts, "doc-needed") == []
    assert values(parts, "date") == ["2026-11-28"]
    details = [p for p in parts if p["url"] == "detail"]
    has_category = all(any(s["url"] == "category" for s in d["extension"]) for d in details)
    assert has_category is (version == "2.2")


def test_not_covered_has_no_pa_needed_and_gives_the_reason(client: FlaskClient) -> None:
    parts = coverage_parts(
        sign(client, fixture("order-sign__e0781-vancomycin__not-covered"))["systemActions"][0]
    )
    assert values(parts, "covered") == ["not-covered"]
    assert values(parts, "pa-needed") == []
    (reason,) = values(parts, "reason")
    assert "vancomycin" in reason["text"]


@pytest.mark.parametrize(
    ("version", "doc_needed"), [("2.0", ["clinical"]), ("2.1", ["clinical"]), ("2.2", ["clinical"])]
)
def test_conditional_asks_for_documentation(
    client: FlaskClient, version: str, doc_needed: list[str]
) -> None:
    parts = coverage_parts(
        sign(client, fixture("order-sign__e0784-insulin__conditional"), version)["systemActions"][0]
    )
    assert values(parts, "covered") == ["conditional"]
    assert values(parts, "doc-needed") == doc_needed
    assert values(parts, "doc-purpose") == ["withclaim"]
    assert values(parts, "info-needed") == ["OTH"]
    assert values(parts, "reason")  # q6, q8
    (questionnaire,) = values(parts, "questionnaire")
    assert questionnaire.startswith("http://infusion-pump-cds.org/fhir/Questionnaire/")


def test_clinical_and_admin_needs_are_both_in_2_0_and_repeat_in_2_1(client: FlaskClient) -> None:
    body = fixture("order-sign__e0784-insulin__conditional")
    body["context"]["draftOrders"]["entry"] = [
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "m-kind",
                "status": "draft",
                "intent": "order",
                "medicationCodeableConcept": {"text": "insulin lispro"},
                "subject": {"reference": "Patient/pat-csii"},
                "dosageInstruction": [{"text": "by pump"}],
            }
        }
    ]
    parts_20 = coverage_parts(sign(client, copy.deepcopy(body), "2.0")["systemActions"][0])
    assert values(parts_20, "doc-needed") == ["admin"]  # the pump kind is an admin item


def test_order_select_never_asks_for_documentation(client: FlaskClient) -> None:
    body = fixture("order-select__e0784-insulin__covered")
    body["prefetch"]["observations"]["entry"] = []  # make it conditional
    answer = sign(client, body, path=ORDER_SELECT)
    parts = coverage_parts(answer["systemActions"][0])
    assert values(parts, "covered") == ["conditional"]
    assert values(parts, "doc-needed") == []
    assert values(parts, "questionnaire") == []
    assert values(parts, "info-needed") == ["OTH"]


def test_order_select_decides_the_selected_orders_only(client: FlaskClient) -> None:
    body = fixture("order-select__e0784-insulin__covered")
    body["context"]["selections"] = ["NutritionOrder/unrelated"]
    assert sign(client, body, path=ORDER_SELECT) == {"cards": []}


def test_technical_failure_is_indeterminate_in_2_2_only(client: FlaskClient) -> None:
    body = fixture("order-sign__e0784-insulin__conditional")
    body["prefetch"]["observations"] = {"resourceType": "OperationOutcome", "issue": []}
    parts_22 = coverage_parts(sign(client, copy.deepcopy(body), "2.2")["systemActions"][0])
    assert values(parts_22, "covered") == ["indeterminate"]
    (reason,) = values(parts_22, "reason")
    assert reason["coding"][0]["code"] == "technical"
    assert "lab results could not be retrieved" in reason["text"]
    parts_20 = coverage_parts(sign(client, body, "2.0")["systemActions"][0])
    assert values(parts_20, "covered") == ["conditional"]
    (reason_20,) = values(parts_20, "reason")
    assert reason_20["text"].startswith("Provisional: lab results could not be retrieved")
