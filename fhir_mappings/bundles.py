"""Walking what a client sent or a FHIR server answered: a resource, or a Bundle of them.

Every reader of prefetch values and draft-order Bundles walks them here, so an entry
that is not an object, a ``resource`` that is not one, or an ``entry`` that is not a
list is found in one place, the same way for all of them: ``entries_of`` reports them
(the patient's record names them), ``resources_in`` skips them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Found = tuple[Mapping[str, Any], Any, str]  # (resource JSON, fullUrl as written, path)


@dataclass(frozen=True, slots=True)
class MisshapenEntry:
    """A Bundle entry that cannot hold a resource: not an object, or its resource not one."""

    path: str
    message: str


class MisshapenBundle(ValueError):
    """A Bundle whose ``entry`` is not a list: nothing it holds can be found."""


def entries_of(value: Any, path: str = "") -> Iterator[Found | MisshapenEntry]:
    """(resource JSON, its fullUrl as written, where it was found) for a resource or each
    resource of a Bundle, and each entry that cannot hold one; nothing for a value that is
    neither, or for an entry with no resource.

    Raises ``MisshapenBundle`` (before yielding anything) when ``entry`` is not a list."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") != "Bundle":
        yield value, None, path
        return
    entries = value.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise MisshapenBundle(f"{path}: entry: expected a list")
    for index, item in enumerate(entries):
        where = f"{path}.entry[{index}]"
        if not isinstance(item, dict):
            yield MisshapenEntry(where, "not a Bundle entry (an object)")
            continue
        resource = item.get("resource")
        if resource is None:
            continue
        if isinstance(resource, dict):
            yield resource, item.get("fullUrl"), where
        else:
            yield MisshapenEntry(where, "resource: expected an object")


def resources_in(value: Any, path: str = "") -> Iterator[tuple[Mapping[str, Any], str | None, str]]:
    """The resources of ``entries_of``, what cannot hold one skipped, a fullUrl that is
    not a string taken as none: for readers that name no problems."""
    try:
        for item in entries_of(value, path):
            if not isinstance(item, MisshapenEntry):
                resource, full_url, where = item
                yield resource, full_url if isinstance(full_url, str) else None, where
    except MisshapenBundle:
        return


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
