"""Observation → lab facts: the most recent relevant value, with its unit normalised."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.codes import LOINC
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary, evidence_text, lab_name
from fhir_mappings.record import Entry, PatientRecord, binding, codings

# Multiply a value in the key unit to get the lab's fact unit (binding "unit").
_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "mg/dL": {"mg/dl": 1.0, "mmol/l": 18.016, "mg/dl(calc)": 1.0},
    "ng/mL": {"ng/ml": 1.0, "ug/l": 1.0, "nmol/l": 3.021, "pmol/l": 0.003021},
    "mL/min": {"ml/min": 1.0, "ml/min/1.73m2": 1.0, "ml/min/{1.73_m2}": 1.0, "ml/s": 60.0},
    "kg": {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237},
    "kg/m2": {"kg/m2": 1.0},
    "%": {"%": 1.0},
}


def lab_loinc_codes() -> list[str]:
    """Every LOINC code a lab fact reads, in the order of ``bindings/labs.json``."""
    return [code for lab in binding("labs")["labs"].values() for code in lab["codes"]]


@dataclass(frozen=True, slots=True)
class LabResult:
    kind: str
    value: float  # in the binding's unit
    unit: str
    on: date | None
    low: float | None  # reference range low, same unit
    reference: str


def _normalise(quantity: Any, unit: str) -> float | None:
    if quantity is None or quantity.value is None:
        return None
    given = (quantity.code or quantity.unit or unit).strip().lower().replace(" ", "")
    if unit == "%" and given in ("mmol/mol",):  # IFCC HbA1c → NGSP percent
        return round(0.09148 * float(quantity.value) + 2.152, 2)
    factor = _UNIT_FACTORS.get(unit, {}).get(given)
    if factor is None and given == unit.lower():
        factor = 1.0
    return None if factor is None else float(quantity.value) * factor


def _resulted_observations(record: PatientRecord) -> list[tuple[Entry, frozenset[str]]]:
    """The record's resulted Observations, each with its LOINC codes (in record order)."""
    return [
        (entry, frozenset(c for s, c, _ in codings(entry.resource.code) if s == LOINC))
        for entry in record.of_type("Observation")
        if entry.resource.status in ("final", "amended", "corrected", "preliminary")
    ]


def lab_results(record: PatientRecord, kind: str, as_of: date) -> list[LabResult]:
    """Final results of one lab kind up to ``as_of``, most recent first."""
    lab = binding("labs")["labs"][kind]
    codes, unit = frozenset(lab["codes"]), lab["unit"]
    results = []
    for entry, loinc_codes in record.derived("labs.resulted", _resulted_observations):
        if not codes & loinc_codes:
            continue
        obs = entry.resource
        value = _normalise(obs.valueQuantity, unit)
        on = as_date(
            obs.effectiveDateTime or getattr(obs.effectivePeriod, "start", None) or obs.issued
        )
        if value is None or (on is not None and on > as_of):
            continue
        low = None
        for reference_range in obs.referenceRange or []:
            low = _normalise(reference_range.low, unit)
            if low is not None:
                break
        results.append(LabResult(kind, value, unit, on, low, entry.reference))
    results.sort(key=lambda r: r.on or date.min, reverse=True)
    return results


def _describe(result: LabResult, name: str) -> Evidence:
    """What a lab showed, rounded as a lab report shows it: "HbA1c 8.2 % on 2026-10-01"."""
    decimals = binding("labs")["labs"][result.kind]["decimals"]
    on = evidence_summary("lab", "on", date=result.on.isoformat()) if result.on else ""
    lower_limit = (
        evidence_summary("lab", "lower_limit", low=result.low, decimals=decimals, unit=result.unit)
        if result.low is not None
        else ""
    )
    summary = evidence_summary(
        "lab",
        "result",
        name=name,
        value=result.value,
        decimals=decimals,
        unit=result.unit,
        lower_limit=lower_limit,
        on=on,
    )
    return Evidence(result.reference, summary)


def latest_value(results: Iterable[LabResult], name: str) -> FactValue:
    for result in results:
        return FactValue(round(result.value, 2), (_describe(result, name),))
    return FactValue(None)


def _derived(fact: str) -> dict[str, Any]:
    """How the fact ``fact`` picks its results (``derived`` in ``bindings/labs.json``)."""
    return binding("labs")["derived"][fact]  # type: ignore[no-any-return]


def _drawn_together(a: date | None, b: date | None, within_days: int) -> bool:
    """Whether two results were drawn within ``within_days`` of each other (two undated
    results count as drawn together)."""
    if a is None or b is None:
        return a == b
    return abs((a - b).days) <= within_days


def c_peptide_facts(record: PatientRecord, as_of: date) -> dict[str, FactValue]:
    """C-peptide as % of the lab's lower limit of normal, and its concurrent fasting glucose."""
    pairing = _derived("lab.c_peptide_fasting_glucose_mg_dl")
    results = lab_results(record, pairing["drawn_with"], as_of)
    if not results:
        return {
            "lab.c_peptide_percent_of_lln": FactValue(None),
            "lab.c_peptide_fasting_glucose_mg_dl": FactValue(None),
        }
    latest = results[0]
    evidence = (_describe(latest, lab_name(latest.kind)),)
    percent = (
        FactValue(round(100 * latest.value / latest.low, 1), evidence)
        if latest.low
        else FactValue(None, evidence)  # no lower limit of normal: cannot be judged
    )
    drawn_with = [
        g
        for g in lab_results(record, pairing["lab"], as_of)
        if _drawn_together(g.on, latest.on, pairing["within_days"])
    ]
    glucose = latest_value(drawn_with, evidence_text()["lab"]["drawn_with_c_peptide"])
    return {"lab.c_peptide_percent_of_lln": percent, "lab.c_peptide_fasting_glucose_mg_dl": glucose}


def glucose_checks_per_day(record: PatientRecord, as_of: date) -> FactValue:
    """Self-monitored (glucometer) glucose results per day over the window before the
    order (``window_days`` in ``bindings/labs.json``)."""
    counted = _derived("lab.glucose_checks_per_day_60d")
    days = int(counted["window_days"])
    results = lab_results(record, counted["lab"], as_of)
    if not results:
        return FactValue(None)
    since = as_of - timedelta(days=days)
    window = [r for r in results if r.on is not None and r.on > since]
    summary = evidence_summary(
        "lab", "checks_per_day", count=len(window), days=days, as_of=as_of.isoformat()
    )
    return FactValue(round(len(window) / days, 2), (Evidence(results[0].reference, summary),))
