"""CDS Hooks requests built from the data in ../shared (Synthea records, CRD examples).

A Synthea record is a FHIR transaction Bundle; its resources are sorted into the
prefetch keys the service asks for (references stay ``urn:uuid:`` as the record has
them), with one active Coverage added since Synthea has none.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import load_json

PREFETCH_KEY_BY_TYPE = {
    "Condition": "conditions",
    "MedicationRequest": "medicationRequests",
    "Observation": "observations",
    "AllergyIntolerance": "allergies",
    "Device": "devices",
    "Encounter": "encounters",
    "Procedure": "procedures",
    "QuestionnaireResponse": "questionnaireResponses",
}
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def synthea_records(shared: Path) -> list[Path]:
    return sorted((shared / "synthea-r4").glob("*.json"))


def searchset(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    items = list(entries)
    return {"resourceType": "Bundle", "type": "searchset", "total": len(items), "entry": items}


def synthea_prefetch(record_file: Path) -> tuple[str, dict[str, Any]]:
    """(patient id, prefetch) for one Synthea record."""
    bundle = load_json(record_file)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in PREFETCH_KEY_BY_TYPE.values()}
    for entry in bundle["entry"]:
        key = PREFETCH_KEY_BY_TYPE.get(entry["resource"]["resourceType"])
        if key:
            grouped[key].append({"fullUrl": entry.get("fullUrl"), "resource": entry["resource"]})
    coverage = {
        "resourceType": "Coverage", "id": f"cov-{patient['id'][:8]}", "status": "active",
        "beneficiary": {"reference": f"Patient/{patient['id']}"},
        "payor": [{"display": "Example Medicare Advantage Plan"}],
    }
    prefetch = {"patient": patient, "coverage": searchset([{"resource": coverage}])}
    prefetch.update({key: searchset(entries) for key, entries in grouped.items()})
    return patient["id"], prefetch


def pump_order_request(
    patient_id: str,
    prefetch: Mapping[str, Any],
    *,
    hcpcs: str,
    drug: tuple[str | None, str],
    dosage_text: str,
    authored: str = "2026-11-01",
) -> dict[str, Any]:
    """An order-sign request for a pump (HCPCS) and the drug it gives (RxNorm, display)."""
    rxnorm, display = drug
    concept: dict[str, Any] = {"text": display}
    if rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": rxnorm, "display": display}]
    device = {
        "resourceType": "DeviceRequest", "id": "pump-order", "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": {"coding": [{"system": HCPCS, "code": hcpcs}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "authoredOn": authored,
    }
    medication = {
        "resourceType": "MedicationRequest", "id": "drug-order", "status": "draft",
        "intent": "order", "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"}, "authoredOn": authored,
        "dosageInstruction": [{"text": dosage_text}],
    }
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{patient_id}/{hcpcs}/{display}")),
        "context": {
            "userId": "Practitioner/ordering-1", "patientId": patient_id,
            "draftOrders": {"resourceType": "Bundle", "type": "collection",
                            "entry": [{"resource": device}, {"resource": medication}]},
        },
        "prefetch": dict(prefetch),
    }
