"""CDS Hooks request bodies the tests build: an insulin pump order for a given patient."""

from __future__ import annotations

import uuid
from typing import Any

from hooks.service import ENCOUNTER_PREFETCH, PATIENT_PREFETCH

ORDER_SIGN_PREFETCH_KEYS = (*PATIENT_PREFETCH, *ENCOUNTER_PREFETCH)
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
COVERAGE_INFORMATION = (
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
)


def insulin_pump_orders(patient_id: str, authored_on: str = "2026-11-28") -> dict[str, Any]:
    """Draft orders: an E0784 external insulin pump and insulin lispro given by it."""
    subject = {"reference": f"Patient/{patient_id}"}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "DeviceRequest",
                    "id": "devreq-e0784",
                    "status": "draft",
                    "intent": "original-order",
                    "codeCodeableConcept": {
                        "coding": [
                            {
                                "system": HCPCS,
                                "code": "E0784",
                                "display": "External ambulatory infusion pump, insulin",
                            }
                        ]
                    },
                    "subject": subject,
                    "authoredOn": authored_on,
                    "requester": {"reference": "Practitioner/pract-1"},
                }
            },
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "medreq-lispro-pump",
                    "status": "draft",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "1652639",
                                "display": "insulin lispro 100 UNT/ML Injectable Solution",
                            }
                        ]
                    },
                    "subject": subject,
                    "authoredOn": authored_on,
                    "requester": {"reference": "Practitioner/pract-1"},
                    "dosageInstruction": [
                        {
                            "text": "Continuous subcutaneous insulin infusion by insulin pump",
                            "route": {
                                "coding": [
                                    {
                                        "system": "http://snomed.info/sct",
                                        "code": "34206005",
                                        "display": "Subcutaneous route",
                                    }
                                ]
                            },
                        }
                    ],
                    "basedOn": [{"reference": "DeviceRequest/devreq-e0784"}],
                }
            },
        ],
    }


def order_sign_request(
    patient_id: str,
    *,
    fhir_server: str | None = None,
    access_token: str = "ehr-access-token",
    prefetch: dict[str, Any] | None = None,
    encounter_id: str | None = None,
    crd_version: str | None = None,
) -> dict[str, Any]:
    """An order-sign call for the insulin pump orders, with what the caller gives."""
    context: dict[str, Any] = {
        "userId": "Practitioner/pract-1",
        "patientId": patient_id,
        "draftOrders": insulin_pump_orders(patient_id),
    }
    if encounter_id:
        context["encounterId"] = encounter_id
    body: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": context,
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "patient/*.read",
            "subject": "infusion-pump-cds",
            "patient": patient_id,
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if crd_version:
        body["extension"] = {"davinci-crd.requestedVersion": crd_version}
    return body


def coverage_information(response_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Every coverage-information extension in a response's system actions."""
    found = []
    for action in response_json.get("systemActions") or []:
        for extension in (action.get("resource") or {}).get("extension") or []:
            if extension.get("url") == COVERAGE_INFORMATION:
                found.append(extension)
    return found


def covered_codes(response_json: dict[str, Any]) -> list[str]:
    """The ``covered`` value of each coverage-information extension."""
    return [
        part["valueCode"]
        for extension in coverage_information(response_json)
        for part in extension["extension"]
        if part["url"] == "covered"
    ]


def coverage_resource(patient_id: str, coverage_id: str = "cov-ma-1") -> dict[str, Any]:
    """An active Medicare Advantage Coverage of the patient."""
    return {
        "resourceType": "Coverage",
        "id": coverage_id,
        "status": "active",
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUBSIDIZ"}
            ],
            "text": "Medicare Advantage",
        },
        "subscriberId": "1EG4TE5MK72",
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2020-01-01"},
        "payor": [
            {
                "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"},
                "display": "Example Medicare Advantage Plan",
            }
        ],
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    """A searchset Bundle of these resources, as a prefetch value."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
    }
    if resources:
        bundle["entry"] = [{"resource": r} for r in resources]
    return bundle


def patient_and_coverage_prefetch(patient_id: str) -> dict[str, Any]:
    """The two keys an EHR is most likely to send: the Patient and the Coverage."""
    return {
        "patient": {
            "resourceType": "Patient",
            "id": patient_id,
            "gender": "female",
            "birthDate": "1950-01-01",
        },
        "coverage": searchset(coverage_resource(patient_id)),
    }
