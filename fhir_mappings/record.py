"""The patient's record as the request carries it: resources indexed by type and reference.

Built from the resolved prefetch values (single resources or Bundles). Only the resource
types the policy reads are parsed (a Synthea record is mostly Claims and
ExplanationOfBenefits), and Observations only when their code is one the policy reads.
A resource that fails validation is left out and named in ``problems``; the rest decides.
References resolve whether written ``Type/id``, as an absolute URL, or as a
``urn:uuid:`` full URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fhir_mappings.codes import LOINC, canonical_system
from fhir_mappings.r4 import FhirModel, InvalidResource, ResourceProblem, parse_resource

# The resource types facts are drawn from.
RECORD_TYPES = frozenset(
    {
        "Patient",
        "Coverage",
        "Condition",
        "MedicationRequest",
        "Medication",
        "Observation",
        "AllergyIntolerance",
        "Device",
        "DeviceRequest",
        "Encounter",
        "Location",
        "Procedure",
        "QuestionnaireResponse",
    }
)


@cache
def binding(name: str) -> dict[str, Any]:
    """A code-binding data file of this package (``bindings/<name>.json``)."""
    text = resources.files("fhir_mappings").joinpath(f"bindings/{name}.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def _relevant_loinc_codes() -> frozenset[str]:
    return frozenset(code for lab in binding("labs")["labs"].values() for code in lab["codes"])


def _is_relevant(raw: Mapping[str, Any]) -> bool:
    resource_type = raw.get("resourceType")
    if resource_type not in RECORD_TYPES:
        return False
    if resource_type != "Observation":
        return True
    codings = (raw.get("code") or {}).get("coding") or []
    return any(
        isinstance(c, dict)
        and canonical_system(c.get("system")) == LOINC
        and c.get("code") in _relevant_loinc_codes()
        for c in codings
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One parsed resource with the reference the record knows it by."""

    reference: str  # "Observation/abc" (or the urn:uuid full URL when it has no id)
    resource: FhirModel
    raw: Mapping[str, Any]


def _iter_raw(value: Any, path: str) -> Iterator[tuple[Mapping[str, Any], str | None, str]]:
    """(resource JSON, fullUrl, path) for a prefetch value: a resource or a Bundle."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        for index, item in enumerate(value.get("entry") or []):
            if isinstance(item, dict) and isinstance(item.get("resource"), dict):
                yield item["resource"], item.get("fullUrl"), f"{path}.entry[{index}]"
    else:
        yield value, None, path


@dataclass
class PatientRecord:
    """Resources by type, findable by any of the reference forms real records use."""

    by_type: dict[str, list[Entry]] = field(default_factory=dict)
    by_reference: dict[str, Entry] = field(default_factory=dict)
    problems: list[ResourceProblem] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # prefetch key -> reason

    def add(self, raw: Mapping[str, Any], full_url: str | None, path: str) -> Entry | None:
        try:
            model = parse_resource(raw, path)
        except InvalidResource as exc:
            self.problems.append(exc.problem)
            return None
        resource_type = raw["resourceType"]
        resource_id = raw.get("id")
        reference = f"{resource_type}/{resource_id}" if resource_id else (full_url or path)
        if reference in self.by_reference:  # the same resource from two prefetch keys
            return self.by_reference[reference]
        entry = Entry(reference, model, raw)
        self.by_type.setdefault(resource_type, []).append(entry)
        self.by_reference[reference] = entry
        if full_url:
            self.by_reference.setdefault(full_url, entry)
        return entry

    def of_type(self, resource_type: str) -> list[Entry]:
        return self.by_type.get(resource_type, [])

    def resolve(self, reference: str | None) -> Entry | None:
        """Find ``Type/id``, ``urn:uuid:...`` or ``https://base/Type/id`` in the record."""
        if not reference:
            return None
        found = self.by_reference.get(reference)
        if found is None and "://" in reference:
            parts = reference.rstrip("/").split("/")
            if len(parts) >= 2:
                # Absolute URL, possibly with /_history/n: keep Type/id.
                if len(parts) >= 4 and parts[-2] == "_history":
                    parts = parts[:-2]
                found = self.by_reference.get(f"{parts[-2]}/{parts[-1]}")
        return found

    def has_data(self, *keys: str) -> bool:
        """Whether every one of these prefetch keys could be had (even if empty)."""
        return not any(key in self.unavailable for key in keys)


def build_record(
    data: Mapping[str, Any], unavailable: Mapping[str, str] | None = None
) -> PatientRecord:
    """Parse the relevant resources of every prefetch value into one record."""
    record = PatientRecord(unavailable=dict(unavailable or {}))
    for key, value in data.items():
        for raw, full_url, path in _iter_raw(value, f"prefetch.{key}"):
            if _is_relevant(raw):
                record.add(raw, full_url, path)
    return record


def codings(concepts: Iterable[Any] | Any) -> list[tuple[str, str, str]]:
    """(canonical system, code, display) of every coding in one or more CodeableConcepts."""
    if concepts is None:
        return []
    if not isinstance(concepts, list | tuple):
        concepts = [concepts]
    found = []
    for concept in concepts:
        for coding in getattr(concept, "coding", None) or []:
            if coding.code:
                found.append((canonical_system(coding.system), coding.code, coding.display or ""))
    return found


def concept_text(concept: Any) -> str:
    """Every human-readable name of a CodeableConcept: text and coding displays."""
    if concept is None:
        return ""
    names = [getattr(concept, "text", None) or ""]
    names += [c.display or "" for c in getattr(concept, "coding", None) or []]
    return " | ".join(n for n in names if n)
