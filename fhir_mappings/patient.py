"""Patient → when the record says the patient died (a deceased patient's orders are not
decided)."""

from __future__ import annotations

from datetime import date

from fhir_mappings.dates import as_date
from fhir_mappings.record import PatientRecord

# A patient recorded as deceased without a date (``deceasedBoolean``) died on this date.
UNKNOWN_DATE_OF_DEATH = date.min


def date_of_death(record: PatientRecord) -> date | None:
    """The date the Patient died (``deceasedDateTime``); ``UNKNOWN_DATE_OF_DEATH`` when
    only ``deceasedBoolean`` says so; None when the record does not say the patient died."""
    for entry in record.of_type("Patient"):
        patient = entry.resource
        if patient.deceasedDateTime is not None:
            return as_date(patient.deceasedDateTime)
        if patient.deceasedBoolean:
            return UNKNOWN_DATE_OF_DEATH
    return None
