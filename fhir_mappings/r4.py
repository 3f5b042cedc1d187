"""The FHIR model switch point: FHIR R4 JSON parsed and validated with fhir.resources R4B.

Everything else in the service sees our own types; this is the only module that imports
fhir.resources, so a change of FHIR model library or version happens here.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

FhirModel = Any  # a fhir.resources R4B resource model instance

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the R4 id type


@dataclass(frozen=True, slots=True)
class ResourceProblem:
    """A resource left out of the decision because it failed validation."""

    resource_type: str
    resource_id: str
    path: (
        str  # where it was found: "prefetch.conditions.entry[3]" or "context.draftOrders.entry[0]"
    )
    message: str


def printable(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate replaced, so it can be encoded, logged
    and stored (JSON may carry one; UTF-8 cannot)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def shown_id(raw: Any) -> str:
    """How a problem names a resource: its id, "(no id)", or "(invalid id)"."""
    resource_id = raw.get("id") if isinstance(raw, dict) else None
    if resource_id is None:
        return "(no id)"
    if isinstance(resource_id, str) and FHIR_ID.fullmatch(resource_id):
        return resource_id
    return "(invalid id)"


def named_problem(resource: Any, path: str, message: str) -> ResourceProblem:
    """A problem naming what it can of ``resource``: its type and id, where well formed."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    shown_type = printable(resource_type) if isinstance(resource_type, str) else "(none)"
    return ResourceProblem(shown_type, shown_id(resource), path, message)


class InvalidResource(ValueError):
    def __init__(self, problem: ResourceProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def parse_element(type_name: str, raw: Any) -> FhirModel | None:
    """A FHIR data type (e.g. ``CodeableConcept``) as its R4B model, or None if invalid."""
    try:
        return get_fhir_model_class(type_name).model_validate(raw)
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return None


def parse_resource(raw: Any, path: str) -> FhirModel:
    """Validate one FHIR R4 resource as JSON and return its R4B model.

    Raises ``InvalidResource`` naming the type, id and path of what failed.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
        raise InvalidResource(ResourceProblem("(none)", "(none)", path, "not a FHIR resource"))
    resource_type = printable(raw["resourceType"])
    resource_id = shown_id(raw)
    try:
        model_class = get_fhir_model_class(resource_type)
    except ValueError as exc:
        problem = ResourceProblem(resource_type, resource_id, path, "unknown resource type")
        raise InvalidResource(problem) from exc
    try:
        return model_class.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
        problem = ResourceProblem(resource_type, resource_id, path, printable(message[:300]))
        raise InvalidResource(problem) from exc
    except RecursionError as exc:  # valid JSON, but nested deeper than any real resource
        problem = ResourceProblem(resource_type, resource_id, path, "nested too deeply")
        raise InvalidResource(problem) from exc


def load_models(type_names: Iterable[str]) -> None:
    """Import the R4B model classes of ``type_names`` and of every element type they can
    hold, now: the models import each element type on first use otherwise (tens of ms
    per type). A server loads them once, before it forks its workers."""
    seen: set[type] = set()
    pending = [get_fhir_model_class(type_name) for type_name in type_names]
    while pending:
        model_class = pending.pop()
        if model_class in seen:
            continue
        seen.add(model_class)
        for model_field in model_class.model_fields.values():
            for element_type in _element_types(model_field.annotation):
                pending.append(element_type.get_model_klass())


def _element_types(annotation: Any) -> Iterator[Any]:
    """The FHIR element types (``fhir_core`` types with ``get_model_klass``) an
    annotation names, through Optional and List."""
    if hasattr(annotation, "get_model_klass"):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _element_types(argument)
