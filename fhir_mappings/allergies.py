"""AllergyIntolerance → whether the patient is allergic to the drug the pump would give.

An allergy counts when it is active (clinical status active or not stated) and not
refuted or entered in error, and its substance (``code`` or a reaction's ``substance``)
names the same drug family as the ordered drug (fhir_mappings.drugs.identify_drug).
"""

from __future__ import annotations

from typing import Any

from coverage_policy.model import Evidence, FactValue
from fhir_mappings.drugs import identify_drug
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord

_NOT_COUNTED_VERIFICATION = {"refuted", "entered-in-error"}
_NOT_COUNTED_CLINICAL = {"inactive", "resolved"}


def _code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return str(coding.code)
    return None


def allergy_is_active(allergy: Any) -> bool:
    """Active, and neither refuted nor entered in error."""
    if _code(allergy.verificationStatus) in _NOT_COUNTED_VERIFICATION:
        return False
    return _code(allergy.clinicalStatus) not in _NOT_COUNTED_CLINICAL


def drug_allergy(record: PatientRecord, drug_family: str | None) -> FactValue:
    """True with the allergy as evidence; False when none matches; None when the drug is
    not identified (so nothing can be matched)."""
    if drug_family is None:
        return FactValue(None)
    for entry in record.of_type("AllergyIntolerance"):
        allergy = entry.resource
        if not allergy_is_active(allergy):
            continue
        concepts = [allergy.code, *(r.substance for r in allergy.reaction or [])]
        for concept in concepts:
            drug = identify_drug(concept)
            if drug is not None and drug.family == drug_family:
                summary = evidence_summary(
                    "patient", "drug_allergy", drug=drug.name, identified_by=drug.identified_by
                )
                return FactValue(True, (Evidence(entry.reference, summary),))
    return FactValue(False)
