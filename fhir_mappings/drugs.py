"""Which drug a MedicationRequest orders, and whether its dosage says "by infusion pump"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from fhir_mappings.codes import RXNORM, SNOMED
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord, binding, codings, concept_text


@dataclass(frozen=True, slots=True)
class DrugIdentity:
    family: str
    name: str  # the ingredient name or code display that identified it
    identified_by: str  # "RxNorm code 11124" or "ingredient name 'vancomycin'"


@cache
def _families() -> tuple[tuple[str, frozenset[str], tuple[re.Pattern[str], ...]], ...]:
    return tuple(
        (
            family["family"],
            frozenset(family["rxnorm"]),
            tuple(re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE) for name in family["names"]),
        )
        for family in binding("drugs")["families"]
    )


def medication_concept(
    order: Any, record: PatientRecord | None, draft: PatientRecord | None
) -> Any:
    """The CodeableConcept naming the drug: inline, or from the referenced Medication."""
    if getattr(order, "medicationCodeableConcept", None) is not None:
        return order.medicationCodeableConcept
    reference = getattr(getattr(order, "medicationReference", None), "reference", None)
    if reference and reference.startswith("#"):
        for contained in getattr(order, "contained", None) or []:
            if getattr(contained, "id", None) == reference[1:]:
                return getattr(contained, "code", None)
    for source in (draft, record):
        entry = source.resolve(reference) if source else None
        if entry is not None:
            return getattr(entry.resource, "code", None)
    return None


def identify_drug(concept: Any) -> DrugIdentity | None:
    """The drug family of a medication concept: by RxNorm code list, then by name."""
    if concept is None:
        return None
    # A record names the same few drugs over and over: identify each naming once.
    return _identify(tuple(codings(concept)), concept_text(concept))


@lru_cache(maxsize=4096)
def _identify(codes: tuple[tuple[str, str, str], ...], text: str) -> DrugIdentity | None:
    rxnorm_codes = [(code, display) for system, code, display in codes if system == RXNORM]
    for family, family_codes, _ in _families():
        for code, display in rxnorm_codes:
            if code in family_codes:
                return DrugIdentity(
                    family,
                    display or code,
                    evidence_summary("identified_by", "rxnorm_code", code=code),
                )
    for family, _, patterns in _families():
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                name = match.group(0).lower()
                how = evidence_summary("identified_by", "ingredient_name", name=name)
                return DrugIdentity(family, name, how)
    return None


def dosage_route_kind(order: Any) -> tuple[str | None, str]:
    """Pump kind implied by the dosage route: (kind, how it was read) or (None, "")."""
    routes = binding("routes")
    for dosage in getattr(order, "dosageInstruction", None) or []:
        for concept in (dosage.route, dosage.method):
            for system, code, display in codings(concept):
                if system == SNOMED and code in routes["snomed"]:
                    how = evidence_summary("identified_by", "route", route=display or code)
                    return routes["snomed"][code], how
            text = concept_text(concept).lower()
            for word, kind in routes["words"].items():
                if word in text:
                    return kind, evidence_summary("identified_by", "route", route=word)
        text = (dosage.text or "").lower()
        for word, kind in routes["words"].items():
            if word in text:
                return kind, evidence_summary("identified_by", "dosage_text", word=word)
    return None, ""


def dosage_says_pump(order: Any) -> bool:
    """Whether the dosage (route, method, text, instructions) says it runs by infusion pump.

    A disposable elastomeric pump or a gravity drip is not an infusion pump: a dosage that
    names one does not say pump.
    """
    routes = binding("routes")
    for dosage in getattr(order, "dosageInstruction", None) or []:
        texts = [dosage.text or "", dosage.patientInstruction or ""]
        texts += [concept_text(c) for c in (dosage.route, dosage.method, dosage.site)]
        texts += [concept_text(c) for c in dosage.additionalInstruction or []]
        joined = " ".join(texts).lower()
        if any(word in joined for word in routes["not_infusion_pump_words"]):
            continue
        if any(word in joined for word in routes["pump_words"]):
            return True
    return False


def dosage_route(order: Any) -> tuple[str | None, str]:
    """The route named by the dosage (intrathecal, epidural, intra-arterial, subcutaneous,
    intravenous): (route, how it was read) or (None, "")."""
    routes = binding("routes")
    for dosage in getattr(order, "dosageInstruction", None) or []:
        for concept in (dosage.route, dosage.method):
            for system, code, display in codings(concept):
                if system == SNOMED and code in routes["route_names"]:
                    return routes["route_names"][code], f"route {display or code}"
        texts = [concept_text(dosage.route), concept_text(dosage.method), dosage.text or ""]
        joined = " ".join(texts).lower()
        for word, route in routes["route_words"].items():
            if word in joined:
                return route, f"dosage '{word}'"
    return None, ""


def names_oral_antispasmodic(concept: Any) -> str | None:
    """The oral antispasmodic a medication concept names (by ingredient name), if any."""
    return _oral_antispasmodic(concept_text(concept))


@cache
def _oral_antispasmodic_patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    names = binding("drugs")["oral_antispasmodics"]["names"]
    return tuple((str(n), re.compile(rf"\b{re.escape(n)}\b", re.IGNORECASE)) for n in names)


@lru_cache(maxsize=4096)
def _oral_antispasmodic(text: str) -> str | None:
    for name, pattern in _oral_antispasmodic_patterns():
        if pattern.search(text):
            return name
    return None
