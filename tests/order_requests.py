"""Build CDS Hooks order-sign requests from FHIR resources: draft pump + drug orders,
prefetch searchset Bundles, a synthesized Coverage. Shared by the route and corpus tests.

The drug codes are RxNorm ingredient RXCUIs with the ingredient name as display. Some
are not confirmed against RxNav (floxuridine 4488, baclofen 1292, dobutamine 3616,
epoprostenol 8814); the service also identifies drugs by name, so the display carries
the identification either way. Routes are SNOMED CT route-of-administration concepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappings.codes import HCPCS, RXNORM, SNOMED
from fhir_mappings.record import binding

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
AUTHORED_ON = "2026-11-01"
PAYER = "Example Medicare Advantage Plan"

SUBCUTANEOUS = ("34206005", "Subcutaneous route")
INTRAVENOUS = ("47625008", "Intravenous route")
INTRATHECAL = ("72607000", "Intrathecal route")
INTRA_ARTERIAL = ("58100008", "Intra-arterial route")
INTRAPERITONEAL = ("38239002", "Intraperitoneal route")


@dataclass(frozen=True, slots=True)
class PumpOrder:
    """A pump (HCPCS) ordered with the drug it gives, as a clinician would sign them.

    External pumps are ordered for home use (category ``community``); drugs for an
    implanted pump are refilled in the clinic (category ``outpatient``).
    """

    label: str  # "E0784+insulin"
    hcpcs: str
    rxnorm: str
    drug: str
    route: tuple[str, str]  # SNOMED CT code, display

    @property
    def category(self) -> str:
        external = binding("pumps")["hcpcs"][self.hcpcs]["kind"] == "external"
        return "community" if external else "outpatient"

    @property
    def slug(self) -> str:
        return self.label.lower().replace("+", "-").replace(" ", "-")


# Every pump kind and drug family the policy names, as the corpus summary orders them.
PUMP_ORDERS = (
    PumpOrder("E0784+insulin", "E0784", "86009", "insulin lispro", SUBCUTANEOUS),
    PumpOrder("E0781+vancomycin", "E0781", "11124", "vancomycin", INTRAVENOUS),
    PumpOrder("E0783+insulin", "E0783", "86009", "insulin lispro", INTRAPERITONEAL),
    PumpOrder("E0779+heparin", "E0779", "5224", "heparin", INTRAVENOUS),
    PumpOrder("E0779+deferoxamine", "E0779", "3131", "deferoxamine", SUBCUTANEOUS),
    PumpOrder("E0779+morphine", "E0779", "7052", "morphine", INTRAVENOUS),
    PumpOrder("E0783+baclofen intrathecal", "E0783", "1292", "baclofen", INTRATHECAL),
    PumpOrder("E0783+morphine intrathecal", "E0783", "7052", "morphine", INTRATHECAL),
    PumpOrder("E0783+floxuridine intra-arterial", "E0783", "4488", "floxuridine", INTRA_ARTERIAL),
    PumpOrder("E0779+fluorouracil", "E0779", "4492", "fluorouracil", INTRAVENOUS),
    PumpOrder("K0455+epoprostenol", "K0455", "8814", "epoprostenol", INTRAVENOUS),
    PumpOrder("E0781+dobutamine", "E0781", "3616", "dobutamine", INTRAVENOUS),
    PumpOrder("E0783+heparin", "E0783", "5224", "heparin", INTRAVENOUS),
)


def pump_order_resources(
    order: PumpOrder, patient_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The draft DeviceRequest (the pump) and MedicationRequest (the drug) of ``order``."""
    subject = {"reference": f"Patient/{patient_id}"}
    pump_display = binding("pumps")["hcpcs"][order.hcpcs]["display"]
    device = {
        "resourceType": "DeviceRequest",
        "id": f"pump-{order.slug}",
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": {
            "coding": [{"system": HCPCS, "code": order.hcpcs, "display": pump_display}],
            "text": pump_display,
        },
        "subject": subject,
        "authoredOn": AUTHORED_ON,
    }
    route_code, route_display = order.route
    medication = {
        "resourceType": "MedicationRequest",
        "id": f"drug-{order.slug}",
        "status": "draft",
        "intent": "original-order",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": order.category}]}],
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": order.rxnorm, "display": order.drug}],
            "text": order.drug,
        },
        "subject": subject,
        "authoredOn": AUTHORED_ON,
        "dosageInstruction": [
            {
                "text": f"Continuous infusion by pump, {route_display.lower()}",
                "route": {
                    "coding": [{"system": SNOMED, "code": route_code, "display": route_display}]
                },
            }
        ],
    }
    return device, medication


def collection(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle (the shape of ``context.draftOrders``)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(r)} for r in resources],
    }


def searchset(entries: Iterable[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    """A ``searchset`` Bundle of (fullUrl, resource) pairs, as a prefetch query returns it."""
    items = []
    for full_url, resource in entries:
        item: dict[str, Any] = {"resource": resource}
        if full_url:
            item["fullUrl"] = full_url
        items.append(item)
    return {"resourceType": "Bundle", "type": "searchset", "total": len(items), "entry": items}


def active_coverage(patient_id: str) -> dict[str, Any]:
    """One active Coverage for the patient with the plan (Synthea records have none)."""
    return {
        "resourceType": "Coverage",
        "id": f"coverage-{patient_id}",
        "status": "active",
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "payor": [{"display": PAYER}],
    }


def order_sign_request(
    patient_id: str,
    orders: Iterable[Mapping[str, Any]],
    prefetch: Mapping[str, Any],
    hook_instance: str,
) -> dict[str, Any]:
    """An order-sign request body signing ``orders`` with the given prefetch."""
    return {
        "hook": "order-sign",
        "hookInstance": hook_instance,
        "context": {
            "userId": "Practitioner/ordering-practitioner",
            "patientId": patient_id,
            "draftOrders": collection(orders),
        },
        "prefetch": dict(prefetch),
    }
