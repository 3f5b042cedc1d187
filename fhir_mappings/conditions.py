"""Condition → the patient's coded diagnoses, with clinical and verification status."""

from __future__ import annotations

from typing import Any

from coverage_policy.model import CodedItem, Evidence
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import Entry, codings

_ACTIVE = {"active", "recurrence", "relapse"}
_INACTIVE = {"inactive", "remission", "resolved"}
_REFUTED = {"refuted", "entered-in-error"}


def _status_code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return str(coding.code)
    return None


def condition_status(condition: Any) -> str:
    """active / inactive / refuted / unconfirmed: only active and confirmed counts for."""
    verification = _status_code(condition.verificationStatus)
    if verification in _REFUTED:
        return "refuted"
    clinical = _status_code(condition.clinicalStatus)
    if clinical in _INACTIVE or condition.abatementDateTime or condition.abatementPeriod:
        return "inactive"
    if verification not in (None, "confirmed"):
        return "unconfirmed"
    return "active" if clinical in _ACTIVE or clinical is None else "unconfirmed"


def facts_from_condition(entry: Entry) -> list[CodedItem]:
    condition = entry.resource
    status = condition_status(condition)
    onset = as_date(condition.onsetDateTime or getattr(condition.onsetPeriod, "start", None))
    since = evidence_summary("patient", "condition_since", onset=onset.isoformat()) if onset else ""
    items = []
    for system, code, display in codings(condition.code):
        label = evidence_summary("patient", "condition_label", display=display) if display else ""
        summary = evidence_summary(
            "patient", "condition", label=label, code=code, status=status, since=since
        )
        items.append(CodedItem(system, code, display, status, Evidence(entry.reference, summary)))
    return items
