"""Patient → ``patient.date_of_death``: when the record says the patient died (the fact
the policy's deceased-patient precondition is stated on)."""

from __future__ import annotations

from datetime import date

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord

# A patient recorded as deceased without a date (``deceasedBoolean``) died on this date.
UNKNOWN_DATE_OF_DEATH = date.min


def date_of_death(record: PatientRecord) -> FactValue:
    """The date the Patient died (``deceasedDateTime``); ``UNKNOWN_DATE_OF_DEATH`` when
    only ``deceasedBoolean`` says so; None when the record does not say the patient died."""
    for entry in record.of_type("Patient"):
        patient = entry.resource
        if patient.deceasedDateTime is not None:
            died = as_date(patient.deceasedDateTime)
            if died is None:
                return FactValue(None)
            summary = evidence_summary("patient", "deceased", date=died.isoformat())
            return FactValue(died, (Evidence(entry.reference, summary),))
        if patient.deceasedBoolean:
            summary = evidence_summary("patient", "deceased_without_date")
            return FactValue(UNKNOWN_DATE_OF_DEATH, (Evidence(entry.reference, summary),))
    return FactValue(None)
