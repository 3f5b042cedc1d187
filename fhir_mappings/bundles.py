"""Walking what a client sent or a FHIR server answered: a resource, or a Bundle of them.

Every reader of prefetch values and draft-order Bundles walks them here, so an entry
that is not an object, a ``resource`` that is not one, or an ``entry`` that is not a
list is skipped in one place, the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def resources_in(value: Any, path: str = "") -> Iterator[tuple[Mapping[str, Any], str | None, str]]:
    """(resource JSON, its fullUrl, where it was found) for a resource or each resource of
    a Bundle; nothing for a value that is neither."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        for index, item in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(item, dict) and isinstance(item.get("resource"), dict):
                full_url = item.get("fullUrl")
                yield (
                    item["resource"],
                    full_url if isinstance(full_url, str) else None,
                    f"{path}.entry[{index}]",
                )
    else:
        yield value, None, path


def reference_of(resource: Mapping[str, Any]) -> str | None:
    """``Type/id`` of a resource that has both as strings, else None."""
    resource_type, resource_id = resource.get("resourceType"), resource.get("id")
    if isinstance(resource_type, str) and isinstance(resource_id, str) and resource_id:
        return f"{resource_type}/{resource_id}"
    return None


def resources_by_reference(values: Iterator[Any] | list[Any]) -> dict[str, Mapping[str, Any]]:
    """Every identifiable resource among prefetch values, by ``Type/id`` (first wins)."""
    found: dict[str, Mapping[str, Any]] = {}
    for value in values:
        for resource, _, _ in resources_in(value):
            reference = reference_of(resource)
            if reference is not None:
                found.setdefault(reference, resource)
    return found
