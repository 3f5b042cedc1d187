"""Date of death: from deceasedDateTime, unknown for deceasedBoolean, else none."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from fhir_mappings.patient import UNKNOWN_DATE_OF_DEATH, date_of_death
from tests.builders import record_of


@pytest.mark.parametrize(
    ("deceased", "expected"),
    [
        ({"deceasedDateTime": "2026-01-05T10:00:00Z"}, date(2026, 1, 5)),
        ({"deceasedDateTime": "2026-01-05"}, date(2026, 1, 5)),
        ({"deceasedBoolean": True}, UNKNOWN_DATE_OF_DEATH),
        ({"deceasedBoolean": False}, None),
        ({}, None),
    ],
)
def test_date_of_death(deceased: dict[str, Any], expected: date | None) -> None:
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1960-01-01", **deceased}
    assert date_of_death(record_of(patient)) == expected


def test_no_patient_no_date_of_death() -> None:
    assert date_of_death(record_of()) is None
