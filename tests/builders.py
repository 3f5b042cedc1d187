"""What the tests build: FHIR R4 resources, Bundles and patient records, and CDS Hooks
order-sign request bodies an EHR could POST, with the readers of a response's
coverage-information.

Three kinds of orders:

- ``PUMP_ORDERS``: every pump kind and drug family the policy names (the corpus, the
  FHIR routes and the try command sign these);
- ``insulin_pump_orders``: an E0784 insulin pump and the insulin it gives, each with a
  requester, the default of ``order_sign_request``;
- ``INSULIN_PUMP``, ``VANCOMYCIN_PUMP``, ``NO_PUMP`` for ``NAMED_PATIENT``, whose record
  has a name and a Condition with a free-text note (``named_patient_request``), so the
  audit, feedback and decision page tests can check that neither ever leaves the call.

The drug codes are RxNorm ingredient RXCUIs with the ingredient name as display. Some
are not confirmed against RxNav (floxuridine 4488, baclofen 1292, dobutamine 3616,
epoprostenol 8814); the service also identifies drugs by name, so the display carries
the identification either way. Routes are SNOMED CT route-of-administration concepts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappings.codes import HCPCS, LOINC, RXNORM, SNOMED
from fhir_mappings.record import PatientRecord, binding, build_record
from hooks.coverage_information import EXTENSION_URL as COVERAGE_INFORMATION
from hooks.service import ENCOUNTER_PREFETCH, PATIENT_PREFETCH

ORDER_SIGN_PREFETCH_KEYS = (*PATIENT_PREFETCH, *ENCOUNTER_PREFETCH)
PRACTITIONER = "Practitioner/pract-1"
AUTHORED_ON = "2026-11-01"
PAYER = "Example Medicare Advantage Plan"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"

SUBCUTANEOUS = ("34206005", "Subcutaneous route")
INTRAVENOUS = ("47625008", "Intravenous route")
INTRATHECAL = ("72607000", "Intrathecal route")
INTRA_ARTERIAL = ("58100008", "Intra-arterial route")
INTRAPERITONEAL = ("38239002", "Intraperitoneal route")


# --- Resources -------------------------------------------------------------------------


def patient(patient_id: str, **extra: Any) -> dict[str, Any]:
    """A Patient born 1950-01-01 (a Medicare age) with ``extra`` members."""
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": "female",
        "birthDate": "1950-01-01",
        **extra,
    }


def coverage(patient_id: str, coverage_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An active Coverage of the patient by the plan (Synthea records have none)."""
    return {
        "resourceType": "Coverage",
        "id": coverage_id or f"coverage-{patient_id}",
        "status": "active",
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "payor": [{"display": PAYER}],
        **extra,
    }


def medicare_advantage_coverage(patient_id: str, coverage_id: str = "cov-ma-1") -> dict[str, Any]:
    """An active Medicare Advantage Coverage as an EHR records it: type, member id, period
    and the plan's NPI."""
    return coverage(
        patient_id,
        coverage_id,
        type={
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUBSIDIZ"}
            ],
            "text": "Medicare Advantage",
        },
        subscriberId="1EG4TE5MK72",
        period={"start": "2020-01-01"},
        payor=[
            {
                "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"},
                "display": PAYER,
            }
        ],
    )


def device_request(
    order_id: str,
    patient_id: str,
    hcpcs: str,
    *,
    display: str | None = None,
    text: str | None = None,
    authored_on: str = AUTHORED_ON,
    **extra: Any,
) -> dict[str, Any]:
    """A draft DeviceRequest for the HCPCS ``hcpcs`` (``extra`` adds or replaces members)."""
    coding = {"system": HCPCS, "code": hcpcs}
    if display:
        coding["display"] = display
    code: dict[str, Any] = {"coding": [coding]}
    if text:
        code["text"] = text
    return {
        "resourceType": "DeviceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": code,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": authored_on,
        **extra,
    }


def medication_request(
    order_id: str,
    patient_id: str,
    rxnorm: str,
    drug: str,
    *,
    text: str | None = None,
    authored_on: str = AUTHORED_ON,
    **extra: Any,
) -> dict[str, Any]:
    """A draft MedicationRequest for the RxNorm ``rxnorm`` named ``drug``."""
    code: dict[str, Any] = {"coding": [{"system": RXNORM, "code": rxnorm, "display": drug}]}
    if text:
        code["text"] = text
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": code,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": authored_on,
        **extra,
    }


def pump_dosage(text: str, route: tuple[str, str]) -> list[dict[str, Any]]:
    """A ``dosageInstruction`` saying how the pump gives the drug, by the SNOMED CT route."""
    route_code, route_display = route
    return [
        {
            "text": text,
            "route": {"coding": [{"system": SNOMED, "code": route_code, "display": route_display}]},
        }
    ]


def observation(
    oid: str,
    code: str,
    value: float,
    unit: str,
    when: str,
    low: float | None = None,
    low_unit: str | None = None,
) -> dict[str, Any]:
    """A final lab Observation of the LOINC ``code``, with a reference range when ``low``."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }
    if low is not None:
        resource["referenceRange"] = [
            {"low": {"value": low, "code": low_unit or unit, "unit": low_unit or unit}}
        ]
    return resource


# --- Bundles and records ---------------------------------------------------------------


def collection(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle (the shape of ``context.draftOrders``)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(r)} for r in resources],
    }


def searchset_of_entries(entries: Iterable[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    """A ``searchset`` Bundle of (fullUrl, resource) pairs, as a prefetch query returns it."""
    items = []
    for full_url, resource in entries:
        item: dict[str, Any] = {"resource": resource}
        if full_url:
            item["fullUrl"] = full_url
        items.append(item)
    return {"resourceType": "Bundle", "type": "searchset", "total": len(items), "entry": items}


def searchset(*resources: Mapping[str, Any]) -> dict[str, Any]:
    """A ``searchset`` Bundle of these resources, as a prefetch value."""
    return searchset_of_entries((None, resource) for resource in resources)


def record_of(
    *resources: Mapping[str, Any], unavailable: dict[str, str] | None = None
) -> PatientRecord:
    """The patient's record of these resources, as one prefetch key had brought them."""
    return build_record({"data": searchset(*resources)}, unavailable)


# --- Pump orders -----------------------------------------------------------------------


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
    pump_display = binding("pumps")["hcpcs"][order.hcpcs]["display"]
    device = device_request(
        f"pump-{order.slug}", patient_id, order.hcpcs, display=pump_display, text=pump_display
    )
    medication = medication_request(
        f"drug-{order.slug}",
        patient_id,
        order.rxnorm,
        order.drug,
        text=order.drug,
        intent="original-order",
        category=[{"coding": [{"system": CATEGORY_SYSTEM, "code": order.category}]}],
        dosageInstruction=pump_dosage(
            f"Continuous infusion by pump, {order.route[1].lower()}", order.route
        ),
    )
    return device, medication


def insulin_pump_orders(patient_id: str, authored_on: str = "2026-11-28") -> list[dict[str, Any]]:
    """Draft orders: an E0784 external insulin pump and insulin lispro given by it."""
    requester = {"reference": PRACTITIONER}
    return [
        device_request(
            "devreq-e0784",
            patient_id,
            "E0784",
            display="External ambulatory infusion pump, insulin",
            authored_on=authored_on,
            requester=requester,
        ),
        medication_request(
            "medreq-lispro-pump",
            patient_id,
            "1652639",
            "insulin lispro 100 UNT/ML Injectable Solution",
            authored_on=authored_on,
            requester=requester,
            dosageInstruction=pump_dosage(
                "Continuous subcutaneous insulin infusion by insulin pump", SUBCUTANEOUS
            ),
            basedOn=[{"reference": "DeviceRequest/devreq-e0784"}],
        ),
    ]


# --- Requests --------------------------------------------------------------------------


def order_sign_request(
    patient_id: str,
    orders: Iterable[Mapping[str, Any]] | None = None,
    prefetch: Mapping[str, Any] | None = None,
    hook_instance: str | None = None,
    *,
    fhir_server: str | None = None,
    access_token: str = "ehr-access-token",
    encounter_id: str | None = None,
    crd_version: str | None = None,
) -> dict[str, Any]:
    """An order-sign call signing ``orders`` (default: ``insulin_pump_orders``), with the
    prefetch, FHIR server, encounter and CRD version the caller gives, and a new
    hookInstance unless given."""
    context: dict[str, Any] = {
        "userId": PRACTITIONER,
        "patientId": patient_id,
        "draftOrders": collection(insulin_pump_orders(patient_id) if orders is None else orders),
    }
    if encounter_id:
        context["encounterId"] = encounter_id
    body: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": hook_instance or str(uuid.uuid4()),
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
        body["prefetch"] = dict(prefetch)
    if crd_version:
        body["extension"] = {"davinci-crd.requestedVersion": crd_version}
    return body


def patient_and_coverage_prefetch(patient_id: str) -> dict[str, Any]:
    """The two keys an EHR is most likely to send: the Patient and the Coverage."""
    return {
        "patient": patient(patient_id),
        "coverage": searchset(medicare_advantage_coverage(patient_id)),
    }


# --- The named patient -----------------------------------------------------------------

NAMED_PATIENT = "pat1"
PATIENT_NAME = "Zebediah Quartermaine"
CONDITION_NOTE = "Patient reports skipping injections when travelling"
_NAMED_AUTHORED_ON = "2026-11-20"

INSULIN_PUMP = [
    device_request("dr-insulin", NAMED_PATIENT, "E0784", authored_on=_NAMED_AUTHORED_ON)
]
VANCOMYCIN_PUMP = [
    device_request(
        "dr-vanco",
        NAMED_PATIENT,
        "E0781",
        authored_on=_NAMED_AUTHORED_ON,
        basedOn=[{"reference": "MedicationRequest/mr-vanco"}],
    ),
    medication_request(
        "mr-vanco", NAMED_PATIENT, "11124", "vancomycin", authored_on=_NAMED_AUTHORED_ON
    ),
]
NO_PUMP = [
    {
        "resourceType": "ServiceRequest",
        "id": "sr-xray",
        "status": "draft",
        "intent": "order",
        "code": {"text": "Chest X-ray"},
        "subject": {"reference": f"Patient/{NAMED_PATIENT}"},
    }
]


def named_patient_prefetch() -> dict[str, Any]:
    """The named patient's Patient, Coverage and a type 1 diabetes Condition with a note."""
    given, family = PATIENT_NAME.split()
    diabetes = {
        "resourceType": "Condition",
        "id": "cond-diabetes",
        "subject": {"reference": f"Patient/{NAMED_PATIENT}"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E10.9"}]},
        "note": [{"text": CONDITION_NOTE}],
    }
    return {
        "patient": patient(NAMED_PATIENT, name=[{"family": family, "given": [given]}]),
        "coverage": searchset(
            coverage(NAMED_PATIENT, "cov1", payor=[{"reference": "Organization/o1"}])
        ),
        "conditions": searchset(diabetes),
    }


def named_patient_request(orders: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A CRD 2.0 order-sign call for the named patient signing ``orders``."""
    return order_sign_request(
        NAMED_PATIENT, orders, prefetch=named_patient_prefetch(), crd_version="2.0"
    )


# --- Reading a response ----------------------------------------------------------------


def coverage_information(response_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every coverage-information extension in a response's system actions."""
    found = []
    for action in response_json.get("systemActions") or []:
        for extension in (action.get("resource") or {}).get("extension") or []:
            if extension.get("url") == COVERAGE_INFORMATION:
                found.append(extension)
    return found


def covered_codes(response_json: Mapping[str, Any]) -> list[str]:
    """The ``covered`` value of each coverage-information extension."""
    return [
        part["valueCode"]
        for extension in coverage_information(response_json)
        for part in extension["extension"]
        if part["url"] == "covered"
    ]
