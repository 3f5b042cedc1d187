"""Lab facts: most recent value, units normalised, C-peptide against the lab's own range."""

from __future__ import annotations

from datetime import date

from fhir_mappings.labs import c_peptide_facts, glucose_checks_per_day, lab_results, latest_value
from tests.builders import observation, record_of

AS_OF = date(2026, 11, 28)


def test_most_recent_value_up_to_the_order_date_wins() -> None:
    record = record_of(
        observation("old", "4548-4", 9.0, "%", "2025-01-01"),
        observation("new", "4548-4", 7.4, "%", "2026-10-01"),
        observation("future", "4548-4", 6.0, "%", "2027-01-01"),
    )
    fact = latest_value(lab_results(record, "hba1c", AS_OF), "HbA1c")
    assert fact.value == 7.4
    assert fact.evidence[0].reference == "Observation/new"
    assert "2026-10-01" in fact.evidence[0].summary


def test_units_are_normalised() -> None:
    record = record_of(
        observation("a1c-ifcc", "4548-4", 58, "mmol/mol", "2026-10-01"),
        observation("glucose-mmol", "1558-6", 10.0, "mmol/L", "2026-10-01"),
        observation(
            "cpep-nmol", "1986-9", 0.1, "nmol/L", "2026-10-01", low=0.26, low_unit="nmol/L"
        ),
    )
    assert latest_value(lab_results(record, "hba1c", AS_OF), "x").value == 7.46
    assert latest_value(lab_results(record, "fasting_glucose", AS_OF), "x").value == 180.16
    facts = c_peptide_facts(record, AS_OF)
    assert facts["lab.c_peptide_percent_of_lln"].value == 38.5


def test_unknown_unit_is_not_guessed() -> None:
    record = record_of(observation("odd", "4548-4", 7.9, "furlongs", "2026-10-01"))
    assert lab_results(record, "hba1c", AS_OF) == []


def test_c_peptide_percent_of_lower_limit_and_concurrent_glucose() -> None:
    record = record_of(
        observation("cpep", "1986-9", 0.6, "ng/mL", "2026-10-14T08:00:00Z", low=0.8),
        observation("fg-same-day", "1558-6", 140, "mg/dL", "2026-10-14T08:00:00Z"),
        observation("fg-other-day", "1558-6", 300, "mg/dL", "2026-11-01"),
    )
    facts = c_peptide_facts(record, AS_OF)
    assert facts["lab.c_peptide_percent_of_lln"].value == 75.0
    assert "lab lower limit 0.8" in facts["lab.c_peptide_percent_of_lln"].evidence[0].summary
    assert facts["lab.c_peptide_fasting_glucose_mg_dl"].value == 140


def test_c_peptide_without_reference_range_cannot_be_judged() -> None:
    record = record_of(observation("cpep", "1986-9", 0.6, "ng/mL", "2026-10-14"))
    facts = c_peptide_facts(record, AS_OF)
    assert facts["lab.c_peptide_percent_of_lln"].value is None
    assert facts["lab.c_peptide_percent_of_lln"].evidence  # but the result seen is shown


def test_glucose_checks_per_day_over_60_days() -> None:
    readings = [
        observation(f"g{i}", "41653-7", 120, "mg/dL", f"2026-10-{1 + i % 28:02d}T0{i % 4}:00:00Z")
        for i in range(120)
    ]
    fact = glucose_checks_per_day(record_of(*readings), AS_OF)
    assert fact.value == 2.0
    assert glucose_checks_per_day(record_of(), AS_OF).value is None
