"""MedicationRequest history → how long a drug has been taken, and how often a day."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.drugs import (
    dosage_route,
    dosage_route_kind,
    dosage_says_pump,
    identify_drug,
    medication_concept,
    names_oral_antispasmodic,
)
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord, binding

_PER_DAY = {
    "s": 86400.0,
    "min": 1440.0,
    "h": 24.0,
    "d": 1.0,
    "wk": 1 / 7,
    "mo": 1 / 30,
    "a": 1 / 365,
}


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


def insulin_mdi_days(record: PatientRecord, as_of: date) -> FactValue:
    """Days of multiple daily injections before the order: the continuous span of insulin
    orders dosed ``min_doses_per_day`` or more a day (``multiple_daily_injections`` in
    ``bindings/drugs.json``) that reaches the order date.

    Each order covers its validity period, else its timing bounds, else its supply with
    refills, else (active) up to the order date; a stopped order without an end date
    covers only the day it was written. Cancelled, draft and entered-in-error orders and
    intravenous or pump orders do not count. None (not found) when the record has no
    insulin orders at all; 0 when no such span reaches the order date.
    """
    injections = binding("drugs")["multiple_daily_injections"]
    family, min_per_day = injections["family"], float(injections["min_doses_per_day"])
    spans: list[tuple[date, date, str]] = []
    insulin_seen = False
    for entry in record.of_type("MedicationRequest"):
        order = entry.resource
        if order.status in _NOT_TAKEN:
            continue
        drug = identify_drug(medication_concept(order, record, None))
        if drug is None or drug.family != family:
            continue
        insulin_seen = True
        if dosage_route(order)[0] in _NOT_INJECTED or dosage_says_pump(order):
            continue
        per_day = doses_per_day(order)
        span = _span(order, as_of)
        if per_day is not None and per_day >= min_per_day and span is not None:
            spans.append((*span, entry.reference))
    reaching = _joined_spans(spans)
    current = next((s for s in reaching if s[1] >= as_of - timedelta(days=1)), None)
    if current is None:
        return FactValue(0 if insulin_seen else None)
    first, _, references = current
    days = (as_of - first).days
    summary = evidence_summary(
        "medication", "insulin_mdi", min_per_day=min_per_day, first=first.isoformat(), days=days
    )
    return FactValue(days, tuple(Evidence(r, summary) for r in references))


_NOT_TAKEN = ("entered-in-error", "draft", "cancelled")
_NOT_INJECTED = ("intravenous", "intrathecal", "epidural", "intra-arterial")


def _joined_spans(spans: list[tuple[date, date, str]]) -> list[tuple[date, date, list[str]]]:
    """Spans that overlap or are at most a day apart, joined; in date order."""
    joined: list[tuple[date, date, list[str]]] = []
    for start, end, reference in sorted(spans):
        if joined and start <= joined[-1][1] + timedelta(days=1):
            first, last, references = joined[-1]
            joined[-1] = (first, max(last, end), [*references, reference])
        else:
            joined.append((start, end, [reference]))
    return joined


def _bounds(order: Any) -> Any:
    """The first boundsPeriod any dosage timing states, else None."""
    for dosage in order.dosageInstruction or []:
        bounds = getattr(getattr(dosage.timing, "repeat", None), "boundsPeriod", None)
        if bounds is not None:
            return bounds
    return None


def _span(order: Any, as_of: date) -> tuple[date, date] | None:
    """The days one order covers: its validity period, else its timing bounds, else its
    supply with refills, else (still active) up to the order date."""
    dispense = order.dispenseRequest
    validity = getattr(dispense, "validityPeriod", None)
    bounds = _bounds(order)
    start = (
        as_date(getattr(validity, "start", None))
        or as_date(getattr(bounds, "start", None))
        or as_date(order.authoredOn)
    )
    if start is None or start > as_of:
        return None
    end = as_date(getattr(validity, "end", None)) or as_date(getattr(bounds, "end", None))
    supply = getattr(dispense, "expectedSupplyDuration", None)
    if end is None and supply is not None and supply.value is not None:
        days = float(supply.value) * _PER_DAY_DAYS.get(supply.code or supply.unit or "d", 1.0)
        end = start + timedelta(days=days * (1 + (dispense.numberOfRepeatsAllowed or 0)))
    if end is None and order.status in ("active", "on-hold", "completed"):
        end = as_of
    return start, min(end or start, as_of)


_PER_DAY_DAYS = {"d": 1.0, "day": 1.0, "days": 1.0, "wk": 7.0, "mo": 30.0}


def oral_antispasmodic_trial_days(record: PatientRecord, as_of: date) -> FactValue:
    """Longest continuous span (days) of oral antispasmodic orders up to the order date.

    Spans that overlap or are at most a day apart are joined. None when the record has no
    oral antispasmodic orders; intrathecal or epidural orders do not count.
    """
    spans: list[tuple[date, date, str]] = []
    for entry in record.of_type("MedicationRequest"):
        order = entry.resource
        if order.status in ("entered-in-error", "draft", "cancelled"):
            continue
        name = names_oral_antispasmodic(medication_concept(order, record, None))
        if name is None or dosage_route_kind(order)[0] == "implantable":
            continue
        span = _span(order, as_of)
        if span is not None:
            spans.append((*span, entry.reference))
    if not spans:
        return FactValue(None)
    spans.sort()
    best: tuple[int, date, date, list[str]] | None = None
    start, end, refs = spans[0][0], spans[0][1], [spans[0][2]]
    for s, e, ref in spans[1:]:
        if s <= end + timedelta(days=1):
            end, refs = max(end, e), [*refs, ref]
            continue
        best = max(best or (0, start, end, refs), ((end - start).days, start, end, refs))
        start, end, refs = s, e, [ref]
    best = max(best or (0, start, end, refs), ((end - start).days, start, end, refs))
    days, first, last, references = best
    summary = evidence_summary(
        "medication",
        "oral_antispasmodic",
        first=first.isoformat(),
        last=last.isoformat(),
        days=days,
    )
    return FactValue(days, tuple(Evidence(r, summary) for r in references))
