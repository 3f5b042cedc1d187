"""Encounter, Location and MedicationRequest.category → the care setting and visit dates."""

from __future__ import annotations

from datetime import date
from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord, codings

# POLICY-BRIEF section 7: home = community/outpatient/discharge, HH, AMB;
# institutional = inpatient, IMP, ACUTE, SNF.
_CATEGORY_SETTING = {
    "inpatient": "institutional",
    "outpatient": "home",
    "community": "home",
    "discharge": "home",
}
_CLASS_SETTING = {
    "IMP": "institutional",
    "ACUTE": "institutional",
    "NONAC": "institutional",
    "AMB": "home",
    "HH": "home",
    "VR": "home",
}
_SNF_LOCATION_CODES = {"SNF", "NURS"}  # v3 RoleCode service delivery location types
_VISIT_CLASSES = {"AMB", "HH", "VR", "virtual"}


def _encounter_setting(entry: Any, record: PatientRecord) -> tuple[str, str] | None:
    encounter = entry.resource
    for location in encounter.location or []:
        place = record.resolve(getattr(location.location, "reference", None))
        if place is None:
            continue
        for concept in getattr(place.resource, "type", None) or []:
            for _, code, _ in codings(concept):
                if code in _SNF_LOCATION_CODES:
                    return "institutional", evidence_summary(
                        "encounter", "skilled_nursing_facility", location=place.reference
                    )
    class_code = getattr(encounter.class_fhir, "code", None)
    if class_code in _CLASS_SETTING:
        return _CLASS_SETTING[class_code], evidence_summary("encounter", "class", code=class_code)
    return None


def order_setting(
    drug_order: Any | None, encounter_reference: str | None, record: PatientRecord
) -> FactValue:
    """Home or institutional: the drug order's category first, then the encounter."""
    if drug_order is not None:
        for concept in drug_order.resource.category or []:
            for _, code, _ in codings(concept):
                if code in _CATEGORY_SETTING:
                    summary = evidence_summary(
                        "encounter", "medication_request_category", code=code
                    )
                    return FactValue(
                        _CATEGORY_SETTING[code], (Evidence(drug_order.reference, summary),)
                    )
    encounter = record.resolve(encounter_reference)
    if encounter is not None:
        found = _encounter_setting(encounter, record)
        if found:
            setting, how = found
            return FactValue(setting, (Evidence(encounter.reference, how),))
    return FactValue(None)


def _same_party(a: str | None, b: str | None) -> bool:
    """Whether two references name the same resource: ``Type/id``, absolute URL or urn."""
    if not a or not b:
        return False
    if a == b:
        return True
    if a.startswith("urn:") or b.startswith("urn:"):
        return False
    return _type_and_id(a) == _type_and_id(b)


def _type_and_id(reference: str) -> list[str]:
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-2:]


def _latest_visit(
    record: PatientRecord,
    as_of: date,
    with_practitioner: str | None = None,
    current: str | None = None,
) -> tuple[date, str] | None:
    """(date, reference) of the most recent finished ambulatory, home-health or virtual
    encounter on or before ``as_of``, with ``with_practitioner`` among its participants
    when given. The ``current`` encounter (the one the order is written in) counts while
    still in progress."""
    best: tuple[date, str] | None = None
    for entry in record.of_type("Encounter"):
        encounter = entry.resource
        ongoing = encounter.status in _ONGOING and _same_party(entry.reference, current)
        if encounter.status != "finished" and not ongoing:
            continue
        if getattr(encounter.class_fhir, "code", None) not in _VISIT_CLASSES:
            continue
        if with_practitioner is not None:
            individuals = [
                getattr(p.individual, "reference", None) for p in encounter.participant or []
            ]
            if not any(_same_party(ref, with_practitioner) for ref in individuals):
                continue
        period = encounter.period
        on = as_date(getattr(period, "start", None) or getattr(period, "end", None))
        if on is not None and on <= as_of and (best is None or on > best[0]):
            best = (on, entry.reference)
    return best


def last_visit_date(record: PatientRecord, as_of: date) -> FactValue:
    """The most recent finished ambulatory, home-health or virtual encounter up to the order."""
    best = _latest_visit(record, as_of)
    if best is None:
        return FactValue(None)
    summary = evidence_summary("encounter", "visit", date=best[0].isoformat())
    return FactValue(best[0], (Evidence(best[1], summary),))


_ONGOING = ("arrived", "triaged", "in-progress")


def face_to_face_date(
    record: PatientRecord,
    as_of: date,
    practitioner: str | None,
    current_encounter: str | None = None,
) -> FactValue:
    """The most recent ambulatory, virtual or home encounter with ``practitioner`` (an
    ``Encounter.participant.individual``) on or before the order date (DME F2F): finished,
    or the current encounter the order is written in, still in progress."""
    best = _latest_visit(record, as_of, practitioner, current_encounter) if practitioner else None
    if best is None:
        return FactValue(None)
    summary = evidence_summary("encounter", "face_to_face", date=best[0].isoformat())
    return FactValue(best[0], (Evidence(best[1], summary),))
