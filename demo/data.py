"""The demo's patients: the fixture requests' records and the Synthea records, as FHIR
resources to load, and the orders worth trying for each.

Each order-sign fixture of ``fixtures/requests`` holds one patient's record in its
prefetch; fixtures reuse ids (``pat-1``, ``cond-1``), so every resource of a fixture gets
an id of its own (``fx-<fixture>`` for the Patient) and references are rewritten to
match. Synthea records (``../shared/synthea-r4``) are loaded as Synthea wrote them, with
only what the service reads, and each patient is given an active Medicare Advantage
Coverage (Synthea writes none).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_service.fhir_load import assign_ids, read_resources, service_reads
from cds_service.try_as_ehr import ROUTES, OrderSpec, TryFailed, find_drug
from fhir_mappings.codes import HCPCS

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_REQUESTS = ROOT / "fixtures" / "requests"
SYNTHEA = ROOT.parent / "shared" / "synthea-r4"
PAYER = "Medicare Advantage Plan"
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_ROUTE_NAMES = {code: name for name, (code, _) in ROUTES.items()}
_HCPCS_SYSTEMS = {
    HCPCS,
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "https://bluebutton.cms.gov/resources/codesystem/hcpcs",
    "http://bluebutton.cms.gov/resources/codesystem/hcpcs",
}


@dataclass
class DemoPatient:
    """A patient on the demo FHIR server, and the orders its source suggests."""

    id: str
    label: str
    source: str  # "fixture" or "synthea"
    resources: list[dict[str, Any]] = field(repr=False, default_factory=list)
    encounter: str | None = None
    orders: list[OrderSpec] = field(default_factory=list)
    expected: str | None = None  # the outcome the fixture's name gives

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "source": self.source,
            "encounter": self.encounter,
            "orders": [{"hcpcs": o.hcpcs, "drug": o.drug, "route": o.route} for o in self.orders],
            "expected": self.expected,
        }


def _walk_references(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        rewritten = {k: _walk_references(v, mapping) for k, v in value.items()}
        reference = value.get("reference")
        if isinstance(reference, str) and reference in mapping:
            rewritten["reference"] = mapping[reference]
        return rewritten
    if isinstance(value, list):
        return [_walk_references(item, mapping) for item in value]
    return value


def _prefetch_resources(prefetch: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType"):
                    yield resource
        elif value.get("resourceType") not in (None, "OperationOutcome"):
            yield value


def _order_specs(draft_orders: Mapping[str, Any]) -> list[OrderSpec]:
    """The fixture's draft orders as ``try`` options: pump code, drug name, route."""
    hcpcs: str | None = None
    drug: str | None = None
    route: str | None = None
    for entry in draft_orders.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "DeviceRequest":
            for coding in (resource.get("codeCodeableConcept") or {}).get("coding") or []:
                if coding.get("system") in _HCPCS_SYSTEMS:
                    hcpcs = coding.get("code")
        elif resource.get("resourceType") == "MedicationRequest":
            concept = resource.get("medicationCodeableConcept") or {}
            names = [concept.get("text")] + [c.get("display") for c in concept.get("coding") or []]
            for name in filter(None, names):
                try:
                    drug = find_drug(str(name)).known_name
                    break
                except TryFailed:
                    continue
            for dosage in resource.get("dosageInstruction") or []:
                for coding in (dosage.get("route") or {}).get("coding") or []:
                    route = _ROUTE_NAMES.get(coding.get("code"), route)
    if hcpcs is None and drug is None:
        return []
    return [OrderSpec(hcpcs, drug, route if drug else None)]


def fixture_patients(folder: Path = FIXTURE_REQUESTS) -> list[DemoPatient]:
    """One patient per order-sign fixture whose prefetch holds a Patient."""
    patients = []
    for path in sorted(folder.glob("order-sign__*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        prefetch = body.get("prefetch") or {}
        if not isinstance(prefetch.get("patient"), dict):
            continue
        name = path.stem.removeprefix("order-sign__")
        scenario, _, expected = name.partition("__")
        patient_id = f"fx-{name.replace('__', '--')}"[:64]
        short = hashlib.sha1(name.encode()).hexdigest()[:6]
        resources = list(
            {(r["resourceType"], r.get("id")): r for r in _prefetch_resources(prefetch)}.values()
        )
        mapping = {}
        for resource in resources:
            if not resource.get("id"):
                continue
            new_id = (
                patient_id
                if resource["resourceType"] == "Patient"
                else f"{short}-{resource['id']}"[:64]
            )
            mapping[f"{resource['resourceType']}/{resource['id']}"] = (
                f"{resource['resourceType']}/{new_id}"
            )
        renamed = []
        for resource in resources:
            copy = _walk_references(resource, mapping)
            if resource.get("id"):
                copy["id"] = mapping[f"{resource['resourceType']}/{resource['id']}"].split("/", 1)[
                    1
                ]
            renamed.append(copy)
        context = body.get("context") or {}
        encounter = context.get("encounterId")
        encounter_ref = mapping.get(f"Encounter/{encounter}") if encounter else None
        patients.append(
            DemoPatient(
                id=patient_id,
                label=f"{scenario} (fixture, expected {expected})",
                source="fixture",
                resources=renamed,
                encounter=encounter_ref.split("/", 1)[1] if encounter_ref else None,
                orders=_order_specs(context.get("draftOrders") or {}),
                expected=expected,
            )
        )
    return patients


def medicare_advantage_coverage(patient_id: str) -> dict[str, Any]:
    """An active Medicare Advantage Coverage of the patient with the plan."""
    return {
        "resourceType": "Coverage",
        "id": f"ma-{patient_id}"[:64],
        "status": "active",
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUBSIDIZ"}
            ],
            "text": "Medicare Advantage",
        },
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "payor": [{"display": PAYER}],
    }


def _name(patient: Mapping[str, Any]) -> str:
    for name in patient.get("name") or []:
        given = " ".join(name.get("given") or [])
        text = f"{given} {name.get('family', '')}".strip()
        if text:
            return re.sub(r"\d+", "", text)
    return str(patient.get("id"))


def synthea_patients(folder: Path = SYNTHEA) -> list[DemoPatient]:
    """One patient per Synthea record in ``folder`` (none when it is absent)."""
    if not folder.is_dir():
        return []
    patients = []
    for path in sorted(folder.glob("*.json")):
        resources = [r for r in assign_ids(read_resources(path)) if service_reads(r)]
        patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
        if patient is None:
            continue
        cohort = path.stem.split("__", 1)[0]
        resources.append(medicare_advantage_coverage(patient["id"]))
        patients.append(
            DemoPatient(
                id=patient["id"],
                label=f"{_name(patient)} (Synthea, {cohort})",
                source="synthea",
                resources=resources,
            )
        )
    return patients
