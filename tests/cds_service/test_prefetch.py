"""Prefetch resolution: what the client sent, what is fetched, what stays unavailable."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.fhir_client import (
    NOT_ALLOWED,
    NOT_FOUND,
    REDIRECTED,
    REFUSED,
    SERVER_ERROR,
    TIMED_OUT,
    TOO_LARGE,
    TOO_MANY_PAGES,
    UNREADABLE,
)
from cds_service.prefetch import (
    EHR_REPORTED_ERROR,
    ONLY_FIRST_PAGE,
    read_context_resources,
    render_template,
    resolve_prefetch,
)
from cds_service.settings import Settings
from hooks import SERVICES
from hooks.request import NOT_SENT, FhirAuthorization, HookRequest
from tests.builders import (
    ORDER_SIGN_PREFETCH_KEYS,
    covered_codes,
    order_sign_request,
    patient_and_coverage_prefetch,
)
from tests.conftest import ORDER_SIGN, make_app
from tests.misbehaving_fhir_server import MisbehavingFhirServer

ORDER_SIGN_SERVICE = SERVICES["infusion-pump-coverage-order-sign"]
DISPATCH_SERVICE = SERVICES["infusion-pump-coverage-order-dispatch"]
DEADLINE_S = 1.0
MARGIN_S = 0.5
FAULT_SETTINGS = {
    "FHIR_SERVERS": ["http://127.0.0.1"],
    "FHIR_DEADLINE_S": DEADLINE_S,
    "FHIR_CALL_TIMEOUT_S": 0.8,
    "FHIR_MAX_PAGES": 5,
    "FHIR_MAX_RESPONSE_BYTES": 1024 * 1024,
}


def _settings(**overrides: Any) -> Settings:
    return Settings.load({"AUTH": "optional", **FAULT_SETTINGS, **overrides}, environ={})


def _hook_request(
    prefetch: dict[str, Any],
    fhir_server: str | None = None,
    context: dict[str, Any] | None = None,
    hook: str = "order-sign",
) -> HookRequest:
    return HookRequest(
        hook=hook,
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        context=context
        or {
            "userId": "Practitioner/pract-1",
            "patientId": "p1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection"},
        },
        prefetch=prefetch,
        fhir_server=fhir_server,
        fhir_authorization=FhirAuthorization("tok-123", "Bearer", "patient/*.read", "cds")
        if fhir_server
        else None,
    )


@pytest.fixture
def fault_client() -> FlaskClient:
    """The service allowed to query loopback FHIR servers, with a 1 s fetch deadline."""
    return make_app(FAULT_SETTINGS).test_client()


# --- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("Patient/{{context.patientId}}", {"patientId": "p-1"}, "Patient/p-1"),
        (
            "Coverage?patient={{context.patientId}}&status=active",
            {"patientId": "abc.9"},
            "Coverage?patient=abc.9&status=active",
        ),
        (
            "Practitioner/{{userPractitionerId}}",
            {"userId": "Practitioner/dr-7"},
            "Practitioner/dr-7",
        ),
        (
            "PractitionerRole/{{ userPractitionerRoleId }}",
            {"userId": "PractitionerRole/r1"},
            "PractitionerRole/r1",
        ),
    ],
)
def test_template_is_rendered_from_root_primitive_context(
    template: str, context: dict[str, Any], expected: str
) -> None:
    assert render_template(template, context) == expected


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("Encounter/{{context.encounterId}}", {"patientId": "p1"}),  # absent
        ("Patient/{{context.patientId}}", {"patientId": "p1&_include=*"}),  # not an id
        ("Patient/{{context.patientId}}", {"patientId": "../metadata"}),
        ("Patient/{{context.patientId}}", {"patientId": True}),
        ("Patient/{{context.patient.id}}", {"patient": {"id": "p1"}}),  # not root level
        ("Device?_id={{context.draftOrders.entry.resource.id}}", {"draftOrders": {}}),
        ("Practitioner/{{userPractitionerId}}", {"userId": "Patient/p1"}),  # wrong type
        ("Patient/{{context.nothing}}{{somethingElse}}", {"nothing": "x"}),
    ],
)
def test_template_whose_token_cannot_be_rendered_gives_none(
    template: str, context: dict[str, Any]
) -> None:
    assert render_template(template, context) is None


# --- without a FHIR server --------------------------------------------------------------


def test_everything_sent_means_nothing_unavailable() -> None:
    prefetch = {key: None for key in ORDER_SIGN_PREFETCH_KEYS}
    clinical = resolve_prefetch(ORDER_SIGN_SERVICE, _hook_request(prefetch), _settings())
    assert clinical.unavailable == {}
    assert set(clinical.data) == set(ORDER_SIGN_PREFETCH_KEYS)


def test_keys_not_sent_and_not_fetchable_are_not_sent() -> None:
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE, _hook_request(patient_and_coverage_prefetch("p1")), _settings()
    )
    assert set(clinical.data) == {"patient", "coverage"}
    assert set(clinical.unavailable) == set(ORDER_SIGN_PREFETCH_KEYS) - {"patient", "coverage"}
    assert set(clinical.unavailable.values()) == {NOT_SENT}


def test_operation_outcome_from_the_ehr_is_a_technical_failure() -> None:
    prefetch = {
        **patient_and_coverage_prefetch("p1"),
        "conditions": {"resourceType": "OperationOutcome", "issue": []},
    }
    clinical = resolve_prefetch(ORDER_SIGN_SERVICE, _hook_request(prefetch), _settings())
    assert clinical.unavailable["conditions"] == EHR_REPORTED_ERROR
    assert "conditions" not in clinical.data


def test_no_usable_patient_data_leaves_every_key_unavailable() -> None:
    prefetch = {"patient": {"resourceType": "OperationOutcome", "issue": []}}
    clinical = resolve_prefetch(ORDER_SIGN_SERVICE, _hook_request(prefetch), _settings())
    assert clinical.data == {}
    assert set(clinical.unavailable) == set(ORDER_SIGN_PREFETCH_KEYS)


def test_no_prefetch_and_no_fhir_server_answers_412(client: FlaskClient) -> None:
    response = client.post(ORDER_SIGN, json=order_sign_request("p1"))
    assert response.status_code == 412
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["code"] == "incomplete"


def test_no_patient_data_is_fine_when_no_order_needs_a_decision(client: FlaskClient) -> None:
    body = order_sign_request("p1")
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "id": "sr-1",
                    "status": "draft",
                    "intent": "order",
                    "code": {"text": "Chest X-ray"},
                    "subject": {"reference": "Patient/p1"},
                }
            }
        ],
    }
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    assert response.json == {"cards": []}


def test_null_prefetch_values_are_data() -> None:
    clinical = resolve_prefetch(ORDER_SIGN_SERVICE, _hook_request({"patient": None}), _settings())
    assert clinical.data == {"patient": None}


# --- fetching ---------------------------------------------------------------------------


def test_missing_keys_are_fetched_with_the_bearer_token(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    base = fhir_faults.base("ok")
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE,
        _hook_request(patient_and_coverage_prefetch("p1"), fhir_server=base),
        _settings(),
    )
    fetched = set(ORDER_SIGN_PREFETCH_KEYS) - {"patient", "coverage", "encounter"}
    assert set(clinical.data) == {"patient", "coverage", *fetched}
    assert clinical.unavailable == {"encounter": NOT_SENT}  # no encounterId to render
    assert clinical.data["conditions"]["resourceType"] == "Bundle"
    paths = sorted(seen.path.split("?")[0] for seen in fhir_faults.requests_seen)
    assert paths == sorted(
        f"/ok/fhir/{t}"
        for t in (
            "AllergyIntolerance",
            "Condition",
            "Device",
            "Encounter",
            "MedicationRequest",
            "Observation",
            "Procedure",
            "QuestionnaireResponse",
        )
    )
    assert {seen.authorization for seen in fhir_faults.requests_seen} == {"Bearer tok-123"}


def test_fetches_run_in_parallel(fhir_faults: MisbehavingFhirServer) -> None:
    fhir_faults.slow_s = 0.3
    started = time.monotonic()
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE,
        _hook_request({}, fhir_server=fhir_faults.base("slow")),
        _settings(FHIR_DEADLINE_S=5.0, FHIR_CALL_TIMEOUT_S=4.0),
    )
    elapsed = time.monotonic() - started
    assert len(clinical.data) == len(ORDER_SIGN_PREFETCH_KEYS) - 1
    # One after another they would take 3 s; in parallel, about one round trip.
    assert elapsed < 1.5, f"10 queries of 0.3 s took {elapsed:.2f} s"


def test_fhir_server_not_allowed_gets_no_query_and_no_token(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE,
        _hook_request(patient_and_coverage_prefetch("p1"), fhir_server=fhir_faults.base("ok")),
        _settings(FHIR_SERVERS=["https://ehr.example.org/fhir"]),
    )
    assert fhir_faults.requests_seen == []
    assert clinical.unavailable["conditions"] == NOT_ALLOWED
    assert clinical.unavailable["encounter"] == NOT_SENT


def test_no_allowed_server_and_no_prefetch_leaves_nothing(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE,
        _hook_request({}, fhir_server=fhir_faults.base("ok")),
        _settings(FHIR_SERVERS=[]),
    )
    assert clinical.data == {}
    assert set(clinical.unavailable.values()) <= {NOT_ALLOWED, NOT_SENT}
    assert fhir_faults.requests_seen == []


def test_a_key_no_fact_reads_is_never_fetched(fhir_faults: MisbehavingFhirServer) -> None:
    """order-dispatch's DeviceRequests key says where a client may send the dispatched
    orders; no fact reads it, so it is not fetched even when every other key is."""
    context = {
        "patientId": "p1",
        "performer": "Organization/dme-1",
        "dispatchedOrders": ["DeviceRequest/dr-1"],
    }
    clinical = resolve_prefetch(
        DISPATCH_SERVICE,
        _hook_request(
            {}, fhir_server=fhir_faults.base("ok"), context=context, hook="order-dispatch"
        ),
        _settings(),
    )
    assert "deviceRequests" in DISPATCH_SERVICE.prefetch
    assert "deviceRequests" not in {*clinical.data, *clinical.unavailable}
    paths = {seen.path.split("?")[0] for seen in fhir_faults.requests_seen}
    assert "/ok/fhir/MedicationRequest" in paths
    assert "/ok/fhir/DeviceRequest" not in paths


def test_dispatched_orders_missing_from_prefetch_are_read_by_reference(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    context = {
        "patientId": "p1",
        "performer": "Organization/dme-1",
        "dispatchedOrders": ["DeviceRequest/dr-1", "MedicationRequest/mr-1"],
    }
    prefetch = {
        "medicationRequests": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "MedicationRequest", "id": "mr-1"}}],
        }
    }
    read = read_context_resources(
        DISPATCH_SERVICE,
        _hook_request(
            prefetch, fhir_server=fhir_faults.base("ok"), context=context, hook="order-dispatch"
        ),
        _settings(),
    )
    assert sorted(read) == ["DeviceRequest/dr-1", "MedicationRequest/mr-1"]
    assert read["MedicationRequest/mr-1"] is prefetch["medicationRequests"]["entry"][0]["resource"]
    # Only what the prefetch lacks is read, and nothing else.
    assert [s.path for s in fhir_faults.requests_seen] == ["/ok/fhir/DeviceRequest/dr-1"]


# --- faults -----------------------------------------------------------------------------

FAULTS = [
    ("slow", TIMED_OUT),
    ("trickle", TIMED_OUT),
    ("status-500", SERVER_ERROR),
    ("status-401", REFUSED),
    ("status-403", REFUSED),
    ("status-404", NOT_FOUND),
    ("garbage", UNREADABLE),
    ("outcome", SERVER_ERROR),
    ("endless", TOO_MANY_PAGES),
    ("offsite", NOT_ALLOWED),
    ("redirect", REDIRECTED),
    ("huge", TOO_LARGE),
    ("huge-declared", TOO_LARGE),
]


@pytest.mark.parametrize(("behaviour", "reason"), FAULTS)
def test_failing_fhir_server_leaves_keys_unavailable_in_time(
    fault_client: FlaskClient,
    fhir_faults: MisbehavingFhirServer,
    elsewhere: MisbehavingFhirServer,
    behaviour: str,
    reason: str,
) -> None:
    fhir_faults.redirect_to = elsewhere.base("ok") + "/"
    body = order_sign_request(
        "p1",
        fhir_server=fhir_faults.base(behaviour),
        prefetch=patient_and_coverage_prefetch("p1"),
        crd_version="2.2",
    )
    started = time.monotonic()
    response = fault_client.post(ORDER_SIGN, json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.json
    assert elapsed < DEADLINE_S + MARGIN_S, f"{behaviour}: answered after {elapsed:.2f} s"
    coverage = next(
        c for c in response.json["cards"] if c["source"]["topic"]["code"] == "guideline"
    )
    first_line = coverage["detail"].splitlines()[0]
    # Said first, in clinical words: what could not be retrieved, why, and that it is provisional.
    assert first_line.startswith("**Provisional**")
    assert reason in first_line
    for words in ("diagnoses", "lab results", "medication orders"):
        assert words in first_line
    assert "Diagnosis of diabetes mellitus" not in " ".join(
        c["detail"] for c in response.json["cards"] if c["source"]["topic"]["code"] == "claim"
    )
    # A technical failure makes a CRD 2.2 answer indeterminate, never a guess.
    assert set(covered_codes(response.json)) == {"indeterminate"}
    assert elsewhere.requests_seen == []


@pytest.mark.parametrize(("behaviour", "reason"), FAULTS)
def test_failing_fhir_server_with_no_prefetch_is_412_in_time(
    fault_client: FlaskClient, fhir_faults: MisbehavingFhirServer, behaviour: str, reason: str
) -> None:
    started = time.monotonic()
    response = fault_client.post(
        ORDER_SIGN, json=order_sign_request("p1", fhir_server=fhir_faults.base(behaviour))
    )
    assert time.monotonic() - started < DEADLINE_S + MARGIN_S
    assert response.status_code == 412
    assert reason in response.json["issue"][0]["diagnostics"]


def test_null_answer_is_no_data(fhir_faults: MisbehavingFhirServer) -> None:
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE,
        _hook_request({"patient": None}, fhir_server=fhir_faults.base("null")),
        _settings(),
    )
    assert clinical.data["conditions"] is None
    assert clinical.unavailable == {"encounter": NOT_SENT}


def test_keys_merely_not_sent_leave_a_crd_22_answer_conditional(client: FlaskClient) -> None:
    body = order_sign_request("p1", prefetch=patient_and_coverage_prefetch("p1"), crd_version="2.2")
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    assert set(covered_codes(response.json)) == {"conditional"}


def _first_page(next_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 3,
        "link": [{"relation": "next", "url": next_url}],
        "entry": [{"resource": {"resourceType": "Condition", "id": "c0"}}],
    }


def test_paginated_prefetch_is_completed(fhir_faults: MisbehavingFhirServer) -> None:
    base = fhir_faults.base("paged")
    prefetch = {
        **patient_and_coverage_prefetch("p1"),
        "conditions": _first_page(f"{base}/Condition?page=1"),
    }
    clinical = resolve_prefetch(
        ORDER_SIGN_SERVICE, _hook_request(prefetch, fhir_server=base), _settings()
    )
    assert [e["resource"]["id"] for e in clinical.data["conditions"]["entry"]] == ["c0", "c1", "c2"]
    assert "conditions" not in clinical.unavailable
    assert {s.authorization for s in fhir_faults.requests_seen} == {"Bearer tok-123"}


def test_paginated_prefetch_that_cannot_be_completed_is_unavailable(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    first = _first_page(f"{fhir_faults.base('paged')}/Condition?page=1")
    prefetch = {**patient_and_coverage_prefetch("p1"), "conditions": first}
    without_server = resolve_prefetch(ORDER_SIGN_SERVICE, _hook_request(prefetch), _settings())
    assert without_server.unavailable["conditions"] == ONLY_FIRST_PAGE
    assert without_server.data["conditions"] == first  # what there is, still shown
    offsite = {**prefetch, "conditions": _first_page("https://elsewhere.example.org/Condition")}
    elsewhere = resolve_prefetch(
        ORDER_SIGN_SERVICE, _hook_request(offsite, fhir_server=fhir_faults.base("ok")), _settings()
    )
    assert elsewhere.unavailable["conditions"] == NOT_ALLOWED


# --- minimum necessary ------------------------------------------------------------------


def test_a_call_that_decides_nothing_fetches_nothing(
    fault_client: FlaskClient, fhir_faults: MisbehavingFhirServer
) -> None:
    """An acetaminophen order with a token and no prefetch: no query of the record."""
    body = order_sign_request("p1", fhir_server=fhir_faults.base("ok"))
    body["context"]["draftOrders"]["entry"] = [
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "mr-apap",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "medicationCodeableConcept": {"text": "acetaminophen 325 MG Oral Tablet"},
            }
        }
    ]
    response = fault_client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    assert response.json == {"cards": []}
    assert fhir_faults.requests_seen == []


def test_only_the_keys_the_decision_reads_are_fetched(
    fault_client: FlaskClient, fhir_faults: MisbehavingFhirServer
) -> None:
    body = order_sign_request("p1", fhir_server=fhir_faults.base("ok"))
    response = fault_client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    queried = {
        s.path.split("/fhir/")[1].split("?")[0].split("/")[0] for s in fhir_faults.requests_seen
    }
    # An insulin pump's decision reads no allergies, devices or procedures.
    assert "AllergyIntolerance" not in queried
    assert "Procedure" not in queried
    assert {"Patient", "Coverage", "Condition", "Observation"} <= queried
