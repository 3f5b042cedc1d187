"""Small builders of FHIR R4 resources for mapping tests."""

from __future__ import annotations

from typing import Any

from fhir_mappings.record import PatientRecord, build_record

LOINC = "http://loinc.org"


def record_of(
    *resources: dict[str, Any], unavailable: dict[str, str] | None = None
) -> PatientRecord:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
    return build_record({"data": bundle}, unavailable)


def observation(
    oid: str,
    code: str,
    value: float,
    unit: str,
    when: str,
    low: float | None = None,
    low_unit: str | None = None,
) -> dict[str, Any]:
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
