"""Real-shaped data from ../shared runs through the service without an error.

- every Synthea record, as prefetch, with an insulin pump order and with a vancomycin
  pump order: 200 and a decision on every order;
- every CDS Hooks request of the CRD conformance test kit is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import ORDER_SIGN, SHARED, load_json, make_app
from tests.response_validation import validate_cds_response
from tests.shared_requests import pump_order_request, synthea_prefetch, synthea_records

EXTENSION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
RECORDS = synthea_records(SHARED) if SHARED.is_dir() else []
ORDERS = {
    "insulin-pump": {"hcpcs": "E0784", "drug": ("1652639", "insulin lispro 100 UNT/ML Injectable Solution"),
                     "dosage_text": "Continuous subcutaneous insulin infusion by insulin pump"},
    "vancomycin-pump": {"hcpcs": "E0781", "drug": (None, "Vancomycin 1000 MG Injection"),
                        "dosage_text": "1 g IV every 12 hours by ambulatory infusion pump"},
}


@pytest.fixture(scope="module")
def shared_client() -> FlaskClient:
    """One service for the whole corpus (building the app once keeps the run short)."""
    return make_app().test_client()


def _covered_codes(body: dict[str, Any]) -> list[str]:
    return [
        part["valueCode"]
        for action in body.get("systemActions", [])
        for extension in action["resource"]["extension"]
        if extension["url"] == EXTENSION
        for part in extension["extension"]
        if part["url"] == "covered"
    ]


@pytest.mark.parametrize("record_file", RECORDS, ids=lambda p: p.stem.split("__")[1])
def test_synthea_record_with_pump_orders_is_decided(
    shared_dir: Path, shared_client: FlaskClient, record_file: Path
) -> None:
    patient_id, prefetch = synthea_prefetch(record_file)
    for order in ORDERS.values():
        body = pump_order_request(patient_id, prefetch, **order)  # type: ignore[arg-type]
        response = shared_client.post(ORDER_SIGN, data=json.dumps(body), content_type="application/json")
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        answer = response.get_json()
        validate_cds_response(answer)
        assert answer["cards"], "every pump order gets guidance"
        codes = _covered_codes(answer)
        deceased = any("deceased" in c["summary"] for c in answer["cards"])
        assert deceased or len(codes) == 2, codes  # both orders carry the decision
        if order["hcpcs"] == "E0781" and not deceased:
            assert set(codes) == {"not-covered"}


def test_corpus_is_present_in_ci(shared_dir: Path) -> None:
    assert len(RECORDS) == 30


CRD_REQUESTS = sorted((SHARED / "crd-examples" / "spec-fixtures").glob("*_hook_request.json")) if SHARED.is_dir() else []


@pytest.mark.parametrize("request_file", CRD_REQUESTS, ids=lambda p: p.stem)
def test_crd_test_kit_requests_are_accepted(shared_dir: Path, request_file: Path) -> None:
    """Posted to the service of their hook; hooks this service does not answer
    (appointment-book, encounter-*, the kit's made-up fancy-structure) are posted with
    the order-sign hook name to prove the envelope and context parse."""
    body = load_json(request_file)
    client = make_app().test_client()
    hook = body["hook"]
    if hook not in ("order-sign", "order-select", "order-dispatch"):
        body = {**body, "hook": "order-sign",
                "context": {**body["context"], "draftOrders": {"resourceType": "Bundle", "entry": []}}}
        hook = "order-sign"
    response = client.post(f"/cds-services/infusion-pump-coverage-{hook}", data=json.dumps(body),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"cards": []}
    validate_cds_response(response.get_json(), hook=hook)  # none of them orders an infusion pump
