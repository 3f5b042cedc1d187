"""The patient's record as the request carries it: resources indexed by type and reference.

Built from the resolved prefetch values (single resources or Bundles). Only the resource
types the facts read are kept (a Synthea record is mostly Claims and
ExplanationOfBenefits), and Observations only when their code is one the policy reads.
Each type is read (``fhir_mappings.reader``: the elements the facts read, checked for
shape) the first time a fact asks for it, so a deceased patient's record is not read
beyond the Patient. A resource whose read elements are malformed is left out and named
in ``problems``, as is a Bundle or Bundle entry that is not shaped as one; the rest
decides. References resolve whether written ``Type/id``, as an absolute URL, or as a
``urn:uuid:`` full URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from fhir_mappings.bundles import MisshapenBundle, MisshapenEntry, entries_of
from fhir_mappings.codes import LOINC, canonical_system
from fhir_mappings.r4 import FhirModel, InvalidResource, ResourceProblem, named_problem
from fhir_mappings.reader import READ_TYPES, read_resource

_T = TypeVar("_T")

# The resource types facts are drawn from.
RECORD_TYPES = READ_TYPES


@cache
def binding(name: str) -> dict[str, Any]:
    """A code-binding data file of this package (``bindings/<name>.json``)."""
    text = resources.files("fhir_mappings").joinpath(f"bindings/{name}.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def _relevant_loinc_codes() -> frozenset[str]:
    return frozenset(code for lab in binding("labs")["labs"].values() for code in lab["codes"])


def _is_relevant(raw: Mapping[str, Any]) -> bool:
    """Whether the facts read this resource: a type they read and, for an Observation, a
    LOINC code the policy reads, or a code too malformed to tell (so it is named)."""
    resource_type = raw.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in RECORD_TYPES:
        return False
    if resource_type != "Observation":
        return True
    concept = raw.get("code")
    if concept is None:
        return False
    codings = concept.get("coding") if isinstance(concept, dict) else 0
    if codings is None:
        return False
    if not isinstance(codings, list):
        return True
    for coding in codings:
        if not isinstance(coding, dict):
            return True
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str | None) or not isinstance(code, str | None):
            return True
        if canonical_system(system) == LOINC and code in _relevant_loinc_codes():
            return True
    return False


@dataclass(frozen=True, slots=True)
class Entry:
    """One read resource with the reference the record knows it by."""

    reference: str  # "Observation/abc" (or the urn:uuid full URL when it has no id)
    resource: FhirModel  # a reader.Element (or, for draft orders, an R4B model)
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Found:
    """A resource found in a prefetch value, not read yet."""

    position: int  # in prefetch order: problems are named in this order
    raw: Mapping[str, Any]
    full_url: str | None
    path: str


class PatientRecord:
    """Resources by type, findable by any of the reference forms real records use; each
    type read for shape on first use."""

    def __init__(self, unavailable: Mapping[str, str] | None = None) -> None:
        self.unavailable: dict[str, str] = dict(unavailable or {})  # prefetch key -> reason
        self._found: dict[str, list[_Found]] = {}
        self._types_of: dict[str, str] = {}  # Type/id or fullUrl -> type, before reading
        self._by_type: dict[str, list[Entry]] = {}
        self._by_reference: dict[str, Entry] = {}
        self._problems: list[tuple[int, ResourceProblem]] = []
        self._count = 0
        self._derived: dict[str, Any] = {}

    @property
    def problems(self) -> list[ResourceProblem]:
        """The resources left out so far, in prefetch order: malformed Bundles and
        entries, and malformed resources of every type a fact has read."""
        return [problem for _, problem in sorted(self._problems, key=lambda p: p[0])]

    def _position(self) -> int:
        self._count += 1
        return self._count

    def left_out(self, problem: ResourceProblem) -> None:
        self._problems.append((self._position(), problem))

    def found(self, raw: Mapping[str, Any], full_url: str | None, path: str) -> None:
        """Keep a resource of a read type to read when a fact asks for its type."""
        resource_type = str(raw["resourceType"])
        self._found.setdefault(resource_type, []).append(
            _Found(self._position(), raw, full_url, path)
        )
        resource_id = raw.get("id")
        if isinstance(resource_id, str):
            self._types_of.setdefault(f"{resource_type}/{resource_id}", resource_type)
        if full_url:
            self._types_of.setdefault(full_url, resource_type)

    def _read(self, resource_type: str) -> None:
        for item in self._found.pop(resource_type, ()):
            try:
                model = read_resource(item.raw, item.path)
            except InvalidResource as exc:
                self._problems.append((item.position, exc.problem))
                continue
            resource_id = item.raw.get("id")
            reference = (
                f"{resource_type}/{resource_id}" if resource_id else (item.full_url or item.path)
            )
            if reference in self._by_reference:  # the same resource from two prefetch keys
                continue
            entry = Entry(reference, model, item.raw)
            self._by_type.setdefault(resource_type, []).append(entry)
            self._by_reference[reference] = entry
            if item.full_url:
                self._by_reference.setdefault(item.full_url, entry)

    def derived(self, name: str, derive: Callable[[PatientRecord], _T]) -> _T:
        """What ``derive`` finds in this record (an index several facts read), derived
        once per record under ``name``."""
        if name not in self._derived:
            self._derived[name] = derive(self)
        return self._derived[name]  # type: ignore[no-any-return]

    def of_type(self, resource_type: str) -> list[Entry]:
        self._read(resource_type)
        return self._by_type.get(resource_type, [])

    def _lookup(self, key: str) -> Entry | None:
        resource_type = self._types_of.get(key)
        if resource_type is not None:
            self._read(resource_type)
        return self._by_reference.get(key)

    def resolve(self, reference: str | None) -> Entry | None:
        """Find ``Type/id``, ``urn:uuid:...`` or ``https://base/Type/id`` in the record."""
        if not reference or not isinstance(reference, str):
            return None
        found = self._lookup(reference)
        if found is None and "://" in reference:
            parts = reference.rstrip("/").split("/")
            if len(parts) >= 2:
                # Absolute URL, possibly with /_history/n: keep Type/id.
                if len(parts) >= 4 and parts[-2] == "_history":
                    parts = parts[:-2]
                found = self._lookup(f"{parts[-2]}/{parts[-1]}")
        return found

    def has_data(self, *keys: str) -> bool:
        """Whether every one of these prefetch keys could be had (even if empty)."""
        return not any(key in self.unavailable for key in keys)


def build_record(
    data: Mapping[str, Any], unavailable: Mapping[str, str] | None = None
) -> PatientRecord:
    """Find the resources the facts read in every prefetch value (read on first use).

    A prefetch value that is a Bundle whose ``entry`` is not a list is left out and named,
    and its key counts as unavailable: what it holds cannot be known."""
    record = PatientRecord(unavailable)
    for key, value in data.items():
        try:
            for item in entries_of(value, f"prefetch.{key}"):
                if isinstance(item, MisshapenEntry):
                    record.left_out(named_problem(None, item.path, item.message))
                    continue
                raw, full_url, where = item
                if full_url is not None and not (isinstance(full_url, str) and full_url.strip()):
                    record.left_out(named_problem(raw, where, "fullUrl: expected a uri"))
                elif not isinstance(raw.get("resourceType"), str):
                    record.left_out(named_problem(raw, where, "resourceType: expected a string"))
                elif _is_relevant(raw):
                    record.found(raw, full_url, where)
        except MisshapenBundle:
            record.left_out(named_problem(value, f"prefetch.{key}", "entry: expected a list"))
            record.unavailable.setdefault(key, "a Bundle whose entry is not a list")
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
