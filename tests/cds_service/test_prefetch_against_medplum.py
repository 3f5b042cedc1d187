"""Prefetch fallback against a real FHIR server: Medplum's router over its memory repository.

The server (``demo/fhir_server``) is loaded with Synthea patients from ``../shared`` and a
Coverage per patient, pages its searches 20 entries at a time, and wants a bearer token.
It answers one query at a time (Node's event loop), so timeouts here are generous: these
tests are about what is fetched, the fault tests about when.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.fhir_client import REFUSED
from hooks.service import ENCOUNTER_PREFETCH, PATIENT_PREFETCH
from tests.builders import (
    HCPCS,
    coverage_information,
    covered_codes,
    medicare_advantage_coverage,
    order_sign_request,
)
from tests.conftest import ORDER_DISPATCH, ORDER_SIGN, SHARED, make_app
from tests.medplum_server import MedplumServer, start_medplum

TOKEN = "medplum-test-token-5f1c"
TEMPLATES = {**PATIENT_PREFETCH, **ENCOUNTER_PREFETCH}
PATIENT_FILES = (
    "diabetes-insulin__Dirk_Kuhlman__1e503533.json",
    "diabetes-insulin__Neva_Hyatt__e6a7ccbf.json",
    "diabetes__Leonel_Hand__6c6f3e04.json",
    "control__Abdul_Koepp__e925b0f3.json",
)


@dataclass(frozen=True)
class LoadedPatient:
    """A Synthea patient on the server: its id, one of its encounters, its Coverage."""

    name: str
    patient_id: str
    encounter_id: str


@pytest.fixture(scope="module")
def medplum() -> Iterator[tuple[MedplumServer, dict[str, LoadedPatient]]]:
    """The FHIR server, loaded with the Synthea patients and a Coverage for each."""
    if not SHARED.is_dir():
        pytest.skip("../shared (Synthea records) is not present")
    server = start_medplum(TOKEN)
    try:
        patients = {}
        for filename in PATIENT_FILES:
            created = server.load_synthea(SHARED / "synthea-r4" / filename)
            patient_id = created["Patient"].split("/")[1]
            server.post("Coverage", {**medicare_advantage_coverage(patient_id), "id": None})
            patients[filename] = LoadedPatient(
                filename, patient_id, created["Encounter"].split("/")[1]
            )
        yield server, patients
    finally:
        server.stop()


@pytest.fixture
def fallback_client() -> FlaskClient:
    """The service, allowed to query loopback FHIR servers."""
    return make_app(
        {"FHIR_SERVERS": ["http://127.0.0.1"], "FHIR_DEADLINE_S": 30.0, "FHIR_CALL_TIMEOUT_S": 20.0}
    ).test_client()


def _render(template: str, patient: LoadedPatient) -> str:
    values = {"context.patientId": patient.patient_id, "context.encounterId": patient.encounter_id}
    return re.sub(r"\{\{(.*?)\}\}", lambda m: values[m.group(1).strip()], template)


def full_prefetch(server: MedplumServer, patient: LoadedPatient) -> dict[str, Any]:
    """Every prefetch key, satisfied the way an EHR would (pages merged)."""
    return {key: server.search_all_pages(_render(t, patient)) for key, t in TEMPLATES.items()}


def _without_ids(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The coverage-information extensions with their per-response assertion ids removed."""
    extensions = copy.deepcopy(coverage_information(response))
    for extension in extensions:
        extension["extension"] = [
            part for part in extension["extension"] if part["url"] != "coverage-assertion-id"
        ]
    return extensions


def _request(patient: LoadedPatient, server: MedplumServer | None, **kwargs: Any) -> Any:
    return order_sign_request(
        patient.patient_id,
        encounter_id=patient.encounter_id,
        crd_version="2.2",
        fhir_server=server.base if server else None,
        access_token=TOKEN,
        **kwargs,
    )


@pytest.mark.parametrize("filename", PATIENT_FILES)
def test_fallback_decides_like_full_prefetch(
    medplum: tuple[MedplumServer, dict[str, LoadedPatient]],
    fallback_client: FlaskClient,
    filename: str,
) -> None:
    server, patients = medplum
    patient = patients[filename]
    prefetch = full_prefetch(server, patient)

    with_prefetch = fallback_client.post(
        ORDER_SIGN, json=_request(patient, None, prefetch=prefetch)
    )
    before = len(server.requests_seen())
    fetched = fallback_client.post(ORDER_SIGN, json=_request(patient, server))
    seen = server.requests_seen()[before:]

    assert with_prefetch.status_code == 200, with_prefetch.json
    assert fetched.status_code == 200, fetched.json
    assert covered_codes(fetched.json) == covered_codes(with_prefetch.json)
    assert covered_codes(fetched.json)[0] in ("covered", "not-covered", "conditional")
    assert _without_ids(fetched.json) == _without_ids(with_prefetch.json)
    details = " ".join(card.get("detail", "") for card in fetched.json["cards"])
    assert "could not be retrieved" not in details
    # Every query carried the client's token, and paging was followed.
    assert seen
    assert all(request["authorized"] for request in seen)
    paged = any(len(v.get("entry", [])) > 20 for v in prefetch.values() if v)
    assert paged == any("_offset=" in request["url"] for request in seen)


def test_partial_prefetch_is_completed(
    medplum: tuple[MedplumServer, dict[str, LoadedPatient]], fallback_client: FlaskClient
) -> None:
    server, patients = medplum
    patient = patients[PATIENT_FILES[0]]
    everything = full_prefetch(server, patient)
    sent = {key: everything[key] for key in ("patient", "coverage", "conditions")}
    before = len(server.requests_seen())
    partial = fallback_client.post(ORDER_SIGN, json=_request(patient, server, prefetch=sent))
    seen = server.requests_seen()[before:]
    full = fallback_client.post(ORDER_SIGN, json=_request(patient, None, prefetch=everything))

    assert partial.status_code == 200
    assert _without_ids(partial.json) == _without_ids(full.json)
    first_pages = [r["url"] for r in seen if "_offset=" not in r["url"]]
    queried_types = sorted(re.match(r"/([A-Za-z]+)", url).group(1) for url in first_pages)
    # Only what an insulin-pump decision reads (minimum necessary): no allergies,
    # devices or procedures.
    assert queried_types == sorted(
        ["MedicationRequest", "Observation", "Encounter", "QuestionnaireResponse", "Encounter"]
    )


def test_the_server_gets_the_token_and_refuses_a_wrong_one(
    medplum: tuple[MedplumServer, dict[str, LoadedPatient]], fallback_client: FlaskClient
) -> None:
    server, patients = medplum
    patient = patients[PATIENT_FILES[0]]
    sent = {"patient": server.get(f"Patient/{patient.patient_id}")}
    body = order_sign_request(
        patient.patient_id,
        fhir_server=server.base,
        access_token="not-the-token",
        prefetch=sent,
        crd_version="2.2",
    )
    before = len(server.requests_seen())
    response = fallback_client.post(ORDER_SIGN, json=body)
    seen = server.requests_seen()[before:]
    assert seen
    assert not any(request["authorized"] for request in seen)
    # The Coverage could not be had (the server refused the token): a CRD request cannot
    # be answered without it, and the data is unavailable rather than wrong: 412.
    assert response.status_code == 412
    assert REFUSED in response.json["issue"][0]["diagnostics"]
    no_prefetch = order_sign_request(
        patient.patient_id, fhir_server=server.base, access_token="not-the-token"
    )
    refused = fallback_client.post(ORDER_SIGN, json=no_prefetch)
    assert refused.status_code == 412
    assert REFUSED in refused.json["issue"][0]["diagnostics"]


def test_dispatched_orders_are_fetched_by_reference(
    medplum: tuple[MedplumServer, dict[str, LoadedPatient]], fallback_client: FlaskClient
) -> None:
    server, patients = medplum
    patient = patients[PATIENT_FILES[0]]
    order = server.post(
        "DeviceRequest",
        {
            "resourceType": "DeviceRequest",
            "status": "active",
            "intent": "order",
            "codeCodeableConcept": {
                "coding": [
                    {
                        "system": HCPCS,
                        "code": "E0784",
                        "display": "External ambulatory infusion pump, insulin",
                    }
                ]
            },
            "subject": {"reference": f"Patient/{patient.patient_id}"},
            "authoredOn": "2026-11-20",
        },
    )
    body = {
        "hook": "order-dispatch",
        "hookInstance": "5d1f5a39-2c4b-4a5e-9a51-0c2d53d6b7a1",
        "fhirServer": server.base,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "patient/*.read",
            "subject": "infusion-pump-cds",
        },
        "context": {
            "patientId": patient.patient_id,
            "performer": "Organization/dme-1",
            "dispatchedOrders": [f"DeviceRequest/{order['id']}"],
        },
    }
    response = fallback_client.post(ORDER_DISPATCH, json=body)
    assert response.status_code == 200, response.json
    updated = [action["resource"] for action in response.json.get("systemActions", [])]
    assert [(r["resourceType"], r["id"]) for r in updated] == [("DeviceRequest", order["id"])]
    assert covered_codes(response.json)


def test_synthea_files_exist() -> None:
    """The fixture list names files that are really in ../shared (when it is there)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    for filename in PATIENT_FILES:
        assert (Path(SHARED) / "synthea-r4" / filename).is_file()
