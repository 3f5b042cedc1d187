"""``patient.date_of_death``: from deceasedDateTime, unknown for deceasedBoolean, else none;
read before anything else for the policy's preconditions."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from coverage_policy.loader import load_policy
from coverage_policy.model import Evidence
from fhir_mappings.facts import PRECONDITION_FACTS, precondition_facts
from fhir_mappings.patient import UNKNOWN_DATE_OF_DEATH, date_of_death
from tests.builders import record_of


@pytest.mark.parametrize(
    ("deceased", "expected", "summary"),
    [
        ({"deceasedDateTime": "2026-01-05T10:00:00Z"}, date(2026, 1, 5), "deceased on 2026-01-05"),
        ({"deceasedDateTime": "2026-01-05"}, date(2026, 1, 5), "deceased on 2026-01-05"),
        ({"deceasedBoolean": True}, UNKNOWN_DATE_OF_DEATH, "deceased, no date recorded"),
        ({"deceasedBoolean": False}, None, None),
        ({}, None, None),
    ],
)
def test_date_of_death(
    deceased: dict[str, Any], expected: date | None, summary: str | None
) -> None:
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1960-01-01", **deceased}
    fact = date_of_death(record_of(patient))
    assert fact.value == expected
    assert fact.evidence == ((Evidence("Patient/p", summary),) if summary else ())


def test_no_patient_no_date_of_death() -> None:
    assert date_of_death(record_of()).value is None


def test_every_precondition_fact_is_read_before_deciding() -> None:
    assert load_policy().precondition_facts <= set(PRECONDITION_FACTS)


def test_precondition_facts_read_only_the_patient() -> None:
    record = record_of(
        {"resourceType": "Patient", "id": "p", "deceasedDateTime": "2026-01-05"},
        {"resourceType": "Condition", "id": "c", "onsetDateTime": "soon"},
    )
    facts = precondition_facts(load_policy(), record)
    assert facts["patient.date_of_death"].value == date(2026, 1, 5)
    assert record.problems == []  # the malformed Condition was never read


def test_a_precondition_fact_without_its_data_is_left_out() -> None:
    record = record_of(unavailable={"patient": "timed out"})
    assert precondition_facts(load_policy(), record) == {}
