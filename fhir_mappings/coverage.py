"""Coverage → the Coverages a coverage-information can be about, and the member's Medicare
Part A status for the stay (Part B vs Part D billing).

Only an active Coverage with an id can be named by a coverage-information extension.

A Coverage whose type or class names Part A (e.g. Blue Button's ``class`` value "Part A")
speaks to it: active with a period covering the order date is ``active``; cancelled, or
ended before the order, is ``none``. Exhausted days and non-covered stays are not in
Coverage resources; they come from the documentation item ``part-a-coverage-status``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord, concept_text


def _names(coverage: Any) -> str:
    names = [concept_text(coverage.type)]
    for item in coverage.class_fhir or []:
        names += [item.value or "", item.name or "", concept_text(item.type)]
    return " | ".join(names).lower()


def active_coverages(record: PatientRecord) -> list[str]:
    """The references of the record's active Coverages that have an id, in record order."""
    return [
        entry.reference
        for entry in record.of_type("Coverage")
        if entry.resource.status == "active" and entry.resource.id
    ]


def part_a_status(record: PatientRecord, as_of: date) -> FactValue:
    for entry in record.of_type("Coverage"):
        coverage = entry.resource
        if "part a" not in _names(coverage):
            continue
        period = coverage.period
        start = as_date(getattr(period, "start", None))
        end = as_date(getattr(period, "end", None))
        in_period = (start is None or start <= as_of) and (end is None or as_of <= end)
        if coverage.status == "active" and in_period:
            return FactValue(
                "active",
                (Evidence(entry.reference, evidence_summary("coverage", "part_a_active")),),
            )
        if coverage.status == "cancelled" or (end is not None and end < as_of):
            summary = evidence_summary(
                "coverage",
                "part_a_ended",
                status=coverage.status,
                end=end.isoformat() if end else "-",
            )
            return FactValue("none", (Evidence(entry.reference, summary),))
    return FactValue(None)
