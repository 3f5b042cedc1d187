"""Order-sign request bodies for the feedback and audit tests, built in code.

The patient has a name and the Condition a free-text note, so tests can check that
neither ever reaches the audit trail.
"""

from __future__ import annotations

import uuid
from typing import Any

HCPCS = "https://bluebutton.cms.gov/resources/codesystem/hcpcs"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT_NAME = "Zebediah Quartermaine"
CONDITION_NOTE = "Patient reports skipping injections when travelling"


def _device(order_id: str, hcpcs: str, **extra: Any) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "DeviceRequest",
            "id": order_id,
            "status": "draft",
            "intent": "original-order",
            "codeCodeableConcept": {"coding": [{"system": HCPCS, "code": hcpcs}]},
            "subject": {"reference": "Patient/pat1"},
            "authoredOn": "2026-11-20",
            **extra,
        }
    }


def _vancomycin(order_id: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": order_id,
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "11124", "display": "vancomycin"}]
            },
            "subject": {"reference": "Patient/pat1"},
            "authoredOn": "2026-11-20",
        }
    }


INSULIN_PUMP = [_device("dr-insulin", "E0784")]
VANCOMYCIN_PUMP = [
    _device("dr-vanco", "E0781", basedOn=[{"reference": "MedicationRequest/mr-vanco"}]),
    _vancomycin("mr-vanco"),
]
NO_PUMP = [
    {
        "resource": {
            "resourceType": "ServiceRequest",
            "id": "sr-xray",
            "status": "draft",
            "intent": "order",
            "code": {"text": "Chest X-ray"},
            "subject": {"reference": "Patient/pat1"},
        }
    }
]


def order_sign_request(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An order-sign call for patient pat1 with ``entries`` as draft orders, a Coverage,
    and a diabetes diagnosis as evidence."""
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "extension": {"davinci-crd.requestedVersion": "2.0"},
        "context": {
            "userId": "Practitioner/p1",
            "patientId": "pat1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries},
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "pat1",
                "birthDate": "1950-01-01",
                "gender": "female",
                "name": [{"family": PATIENT_NAME.split()[1], "given": [PATIENT_NAME.split()[0]]}],
            },
            "coverage": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "Coverage",
                            "id": "cov1",
                            "status": "active",
                            "beneficiary": {"reference": "Patient/pat1"},
                            "payor": [{"reference": "Organization/o1"}],
                        }
                    }
                ],
            },
            "conditions": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "Condition",
                            "id": "cond-diabetes",
                            "subject": {"reference": "Patient/pat1"},
                            "clinicalStatus": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active",
                                    }
                                ]
                            },
                            "code": {
                                "coding": [
                                    {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E10.9"}
                                ]
                            },
                            "note": [{"text": CONDITION_NOTE}],
                        }
                    }
                ],
            },
        },
    }
