"""MedicationRequest history → how long a drug has been taken, and how often a day."""

from __future__ import annotations

from datetime import date
from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.drugs import identify_drug, medication_concept
from fhir_mappings.record import PatientRecord

_PER_DAY = {"s": 86400.0, "min": 1440.0, "h": 24.0, "d": 1.0, "wk": 1 / 7, "mo": 1 / 30, "a": 1 / 365}


def doses_per_day(order: Any) -> float | None:
    """The highest dosing frequency per day any dosage instruction states."""
    best = None
    for dosage in order.dosageInstruction or []:
        repeat = getattr(dosage.timing, "repeat", None)
        if repeat is None or not repeat.frequency:
            continue
        period = float(repeat.period or 1)
        per_unit = _PER_DAY.get(repeat.periodUnit or "d")
        if per_unit is None or period <= 0:
            continue
        rate = float(repeat.frequencyMax or repeat.frequency) * per_unit / period
        best = rate if best is None else max(best, rate)
    return best


def insulin_mdi_days(record: PatientRecord, as_of: date, min_per_day: float = 3) -> FactValue:
    """Days from the first insulin order dosed ``min_per_day`` or more a day up to the order.

    None (not found) when the record has no insulin orders at all; 0 when it has insulin
    orders but none dosed often enough.
    """
    spans: list[tuple[date, str]] = []
    insulin_seen = False
    for entry in record.of_type("MedicationRequest"):
        order = entry.resource
        drug = identify_drug(medication_concept(order, record, None))
        if drug is None or drug.family != "insulin" or order.status == "entered-in-error":
            continue
        insulin_seen = True
        started = as_date(order.authoredOn)
        per_day = doses_per_day(order)
        if started and started <= as_of and per_day is not None and per_day >= min_per_day:
            spans.append((started, entry.reference))
    if not spans:
        return FactValue(0 if insulin_seen else None)
    first, reference = min(spans)
    days = (as_of - first).days
    summary = f"insulin dosed {min_per_day:g}+ times a day since {first.isoformat()} ({days} days)"
    return FactValue(days, (Evidence(reference, summary),))
