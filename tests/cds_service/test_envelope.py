"""The request envelope: liberal where CDS Hooks says so, strict where it must be."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import FIXTURES, ORDER_DISPATCH, ORDER_SELECT, ORDER_SIGN, load_json

SIGN_FIXTURE = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"


@pytest.fixture
def sign_body() -> dict[str, Any]:
    """A complete, valid order-sign request body (the covered CSII fixture)."""
    return copy.deepcopy(load_json(SIGN_FIXTURE))


def _post(client: FlaskClient, body: Any, path: str = ORDER_SIGN) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


@pytest.mark.parametrize(
    ("mutate", "expression"),
    [
        (lambda b: b.pop("hook"), None),
        (lambda b: b.pop("hookInstance"), None),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b.update(hook="order-select"), "hook"),
        (lambda b: b.pop("context"), None),
        (lambda b: b.update(context=[]), "context"),
        (lambda b: b["context"].pop("draftOrders"), "context"),
        (
            lambda b: b["context"].update(draftOrders={"resourceType": "Patient"}),
            "context.draftOrders.resourceType",
        ),
        (lambda b: b["context"].update(patientId=7), "context.patientId"),
        (lambda b: b.pop("fhirServer"), None),  # fhirAuthorization without fhirServer
        (lambda b: b.update(fhirAuthorization={"access_token": "t"}), "fhirAuthorization"),
        (lambda b: b.update(prefetch={"patient": "Patient/1"}), "prefetch.patient"),
        (lambda b: b.update(prefetch=[]), "prefetch"),
        (lambda b: b.update(extension=["davinci-crd.requestedVersion"]), "extension"),
    ],
)
def test_malformed_request_is_400_naming_what_and_where(
    client: FlaskClient, sign_body: dict[str, Any], mutate: Any, expression: str | None
) -> None:
    sign_body["fhirAuthorization"] = {
        "access_token": "secret-token",
        "token_type": "Bearer",
        "expires_in": 30,
        "scope": "user/Patient.read",
        "subject": "payer-cds",
    }
    mutate(sign_body)
    response = _post(client, sign_body)
    assert response.status_code == 400
    outcome = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    assert issue["diagnostics"]
    if expression:
        assert any(expression in e for i in outcome["issue"] for e in i.get("expression", []))
    assert "secret-token" not in response.get_data(as_text=True)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'"text"', b"42"])
def test_non_object_bodies_are_400(client: FlaskClient, raw: bytes) -> None:
    response = _post(client, raw)
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"


def test_unknown_members_are_ignored(client: FlaskClient, sign_body: dict[str, Any]) -> None:
    sign_body["futureMember"] = {"x": 1}
    sign_body["context"]["futureContext"] = [1, 2]
    sign_body["extension"] = {"com.example.trace": "abc"}
    assert _post(client, sign_body).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"resourceType": "OperationOutcome", "issue": []},
        {"resourceType": "Bundle", "type": "searchset"},
    ],
)
def test_prefetch_values_may_be_null_operation_outcome_or_empty_bundle(
    client: FlaskClient, sign_body: dict[str, Any], value: Any
) -> None:
    sign_body["prefetch"]["conditions"] = value
    response = _post(client, sign_body)
    assert response.status_code == 200
    assert response.json["systemActions"]


def test_operation_outcome_prefetch_is_named_as_not_retrieved(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    sign_body["prefetch"]["conditions"] = {"resourceType": "OperationOutcome", "issue": []}
    card = _post(client, sign_body).json["cards"][0]
    first_line = card["detail"].splitlines()[0]
    assert "diagnoses" in first_line
    assert "the EHR reported an error for this query" in first_line


def test_unreadable_prefetch_bundle_is_not_checked_and_not_asked_for(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    """A Bundle whose entry is not a list hides what it holds: its data is "not checked"
    with the reason, as for a failed query, and never asked to be documented."""
    sign_body["prefetch"]["conditions"] = {"resourceType": "Bundle", "entry": {"x": 1}}
    cards = _post(client, sign_body).json["cards"]
    first_line = cards[0]["detail"].splitlines()[0]
    assert "diagnoses" in first_line
    assert "a Bundle whose entry is not a list" in first_line
    assert not any(c["summary"].startswith("Document before signing") for c in cards)


def test_invalid_resource_is_left_out_and_named(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    entries = sign_body["prefetch"]["conditions"]["entry"]
    entries.append(
        {
            "resource": {
                "resourceType": "Condition",
                "id": "broken",
                "subject": {"reference": "Patient/pat-csii"},
                "onsetDateTime": "yesterday-ish",
            }
        }
    )
    response = _post(client, sign_body)
    assert response.status_code == 200
    detail = response.json["cards"][0]["detail"]
    assert "Condition/broken at prefetch.conditions.entry[1]" in detail
    assert "covered under" in response.json["cards"][0]["summary"]  # the rest still decides


def test_invalid_order_of_something_else_is_left_out(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    sign_body["context"]["draftOrders"]["entry"].append(
        {
            "resource": {
                "resourceType": "NutritionOrder",
                "id": "diet-1",
                "status": "draft",
                "intent": "order",
                "patient": {"reference": "Patient/pat-csii"},
                "dateTime": "28/11/2026",
            }
        }
    )
    response = _post(client, sign_body)
    assert response.status_code == 200
    references = [a["resource"]["id"] for a in response.json["systemActions"]]
    assert references == ["devreq-e0784", "medreq-lispro-pump"]
    assert (
        "NutritionOrder/diet-1 at context.draftOrders.entry[2]"
        in response.json["cards"][0]["detail"]
    )


@pytest.mark.parametrize(("entry", "decided"), [(0, "medreq-lispro-pump"), (1, "devreq-e0784")])
def test_invalid_pump_or_pump_drug_order_gets_a_warning_card_and_the_rest_is_decided(
    client: FlaskClient, sign_body: dict[str, Any], entry: int, decided: str
) -> None:
    """An in-scope order that is not valid FHIR is named with what is wrong and not
    decided (an update cannot carry an invalid resource); the other order still is."""
    invalid = sign_body["context"]["draftOrders"]["entry"][entry]["resource"]
    invalid["authoredOn"] = "28/11/2026"
    response = _post(client, sign_body)
    assert response.status_code == 200
    warnings = [c for c in response.json["cards"] if "not valid FHIR" in c["summary"]]
    (card,) = warnings
    reference = f"{invalid['resourceType']}/{invalid['id']}"
    assert card["indicator"] == "warning"
    assert reference in card["detail"]
    assert "authoredOn" in card["detail"]
    assert card["extension"]["davinci-crd.associated-resource"] == [{"reference": reference}]
    updated = [a["resource"]["id"] for a in response.json["systemActions"]]
    assert updated == [decided]


# The CDS Hooks sandbox's Rx Sign: MedicationRequests whose category is an object, not
# the array R4 requires, for drugs the policy names but not given by pump.
SANDBOX_ORAL_ORDERS = [
    ("vancomycin", "1807516", "vancomycin 125 MG Oral Capsule"),
    ("morphine", "892494", "morphine sulfate 15 MG Oral Tablet"),
    ("baclofen", "197391", "baclofen 10 MG Oral Tablet"),
    ("acetaminophen", "313782", "acetaminophen 325 MG Oral Tablet"),
]


def _sandbox_rx_sign(code: str, display: str) -> dict[str, Any]:
    return {
        "hook": "order-sign",
        "hookInstance": "3a1c2f4e-8b1d-4c55-9d0e-6f8a1b2c3d4e",
        "context": {
            "userId": "Practitioner/COREPRACTITIONER1",
            "patientId": "smart-1288992",
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MedicationRequest",
                            "id": "request-123",
                            "status": "draft",
                            "intent": "order",
                            "category": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "medicationrequest-category",
                                        "code": "outpatient",
                                    }
                                ]
                            },
                            "medicationCodeableConcept": {
                                "text": display,
                                "coding": [
                                    {
                                        "display": display,
                                        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                        "code": code,
                                    }
                                ],
                            },
                            "subject": {"reference": "Patient/smart-1288992"},
                            "dosageInstruction": [
                                {
                                    "text": "1 tablet by mouth daily",
                                    "timing": {"repeat": {"frequency": 1, "period": 1}},
                                    "route": {"text": "oral"},
                                }
                            ],
                        }
                    }
                ],
            },
        },
    }


@pytest.mark.parametrize(("name", "code", "display"), SANDBOX_ORAL_ORDERS)
def test_an_invalid_order_out_of_scope_never_fails_the_call(
    client: FlaskClient, name: str, code: str, display: str
) -> None:
    response = _post(client, _sandbox_rx_sign(code, display))
    assert response.status_code == 200, response.json
    assert response.json == {"cards": []}


def test_an_invalid_pump_drug_order_whose_dosage_says_pump_is_in_scope(
    client: FlaskClient,
) -> None:
    body = _sandbox_rx_sign("1807516", "vancomycin 1 G Injection")
    dosage = body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]
    dosage.update(text="1 g IV every 12 hours by infusion pump", route={"text": "intravenous"})
    response = _post(client, body)
    assert response.status_code == 200
    (card,) = response.json["cards"]
    assert card["summary"].startswith("Vancomycin by infusion pump order: not decided")
    assert "MedicationRequest/request-123" in card["detail"]
    assert "category" in card["detail"]
    assert "systemActions" not in response.json


def test_order_select_requires_selections(client: FlaskClient, sign_body: dict[str, Any]) -> None:
    sign_body["hook"] = "order-select"
    response = _post(client, sign_body, ORDER_SELECT)
    assert response.status_code == 400
    assert "selections" in response.json["issue"][0]["diagnostics"]


def test_order_dispatch_needs_one_of_the_context_versions(client: FlaskClient) -> None:
    body = load_json(FIXTURES / "requests" / "order-dispatch__e0784-insulin-v1.1__covered.json")
    body["context"].pop("dispatchedOrders")
    response = _post(client, body, ORDER_DISPATCH)
    assert response.status_code == 400


def test_dispatched_order_that_cannot_be_found_is_412(client: FlaskClient) -> None:
    body = load_json(FIXTURES / "requests" / "order-dispatch__e0784-insulin-v1.1__covered.json")
    body["context"]["dispatchedOrders"] = ["DeviceRequest/not-in-prefetch"]
    response = _post(client, body, ORDER_DISPATCH)
    assert response.status_code == 412
    assert response.json["resourceType"] == "OperationOutcome"


def test_crd_request_with_two_coverages_is_400(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    entry = copy.deepcopy(sign_body["prefetch"]["coverage"]["entry"][0])
    entry["resource"]["id"] = "cov-second"
    sign_body["prefetch"]["coverage"]["entry"].append(entry)
    sign_body["extension"] = {"davinci-crd.requestedVersion": "2.0"}
    response = _post(client, sign_body)
    assert response.status_code == 400
    assert "2 active Coverages" in response.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "poison",
    [
        {"resourceType": 5},
        {"resourceType": "Bundle", "entry": "x"},
        {"resourceType": "Bundle", "entry": [None, 3, {"resource": []}]},
        {"resourceType": "Observation", "valueQuantity": {"value": "NaN"}},
    ],
)
def test_odd_prefetch_shapes_never_500(
    client: FlaskClient, sign_body: dict[str, Any], poison: Any
) -> None:
    for key in list(sign_body["prefetch"]):
        sign_body["prefetch"][key] = poison
    response = _post(client, sign_body)
    assert response.status_code in (200, 400)
    assert "Traceback" not in response.get_data(as_text=True)


def test_deeply_nested_json_is_400_not_500(client: FlaskClient) -> None:
    body = '{"hook": "order-sign", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    response = _post(client, body)
    assert response.status_code == 400
    assert "nests JSON too deeply" in response.json["issue"][0]["diagnostics"]


def test_deeply_nested_unread_element_is_not_looked_at(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    """Extensions are not read by any fact: nesting them deeply changes nothing."""
    nested: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(400):
        nested = {"url": "http://example.org/x", "extension": [nested]}
    sign_body["prefetch"]["conditions"]["entry"][0]["resource"]["extension"] = [nested]
    response = _post(client, sign_body)
    assert response.status_code == 200
    assert "Condition/cond-t1dm" not in response.json["cards"][0]["detail"]


def test_deeply_nested_read_element_is_left_out_not_500(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    """QuestionnaireResponse items nested deeper than the reader follows: left out, named."""
    item: dict[str, Any] = {"linkId": "leaf"}
    for _ in range(100):
        item = {"linkId": "x", "item": [item]}
    sign_body["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]["item"] = [item]
    response = _post(client, sign_body)
    assert response.status_code == 200
    assert "nested too deeply" not in response.get_data(as_text=True)  # named, not detailed
    assert (
        "QuestionnaireResponse/qr-csii at prefetch.questionnaireResponses.entry[0]"
        in response.json["cards"][0]["detail"]
    )


def test_null_extension_on_an_order_is_tolerated(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    sign_body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = None
    response = _post(client, sign_body)
    assert response.status_code == 200
    (update,) = [a for a in response.json["systemActions"] if a["resource"]["id"] == "devreq-e0784"]
    assert [e["url"] for e in update["resource"]["extension"]] == [
        "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
    ]


def test_oversized_body_is_413(sign_body: dict[str, Any]) -> None:
    from tests.conftest import make_app

    client = make_app({"MAX_REQUEST_BYTES": 2048}).test_client()
    response = _post(client, sign_body)
    assert response.status_code == 413
    assert response.json["resourceType"] == "OperationOutcome"


def test_too_many_draft_orders_is_400(client: FlaskClient, sign_body: dict[str, Any]) -> None:
    entry = sign_body["context"]["draftOrders"]["entry"][0]
    sign_body["context"]["draftOrders"]["entry"] = [entry] * 101
    response = _post(client, sign_body)
    assert response.status_code == 400
    assert "context.draftOrders.entry" in response.json["issue"][0]["expression"][0]


def test_crd_request_whose_coverage_could_not_be_had_is_412(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    sign_body["extension"] = {"davinci-crd.requestedVersion": "2.0"}
    del sign_body["prefetch"]["coverage"]
    response = _post(client, sign_body)
    assert response.status_code == 412
    assert response.json["issue"][0]["expression"] == ["prefetch.coverage"]


def test_coverage_without_id_cannot_be_referenced(
    client: FlaskClient, sign_body: dict[str, Any]
) -> None:
    coverage = sign_body["prefetch"]["coverage"]["entry"][0]
    coverage["resource"].pop("id")
    coverage.pop("fullUrl", None)
    response = _post(client, sign_body)
    assert response.status_code == 200
    assert "systemActions" not in response.json  # no Coverage to record the decision against
    sign_body["extension"] = {"davinci-crd.requestedVersion": "2.0"}
    assert _post(client, sign_body).status_code == 400
