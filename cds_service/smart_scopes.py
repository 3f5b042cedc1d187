"""SMART system scopes (SMART App Launch 2.x, "Scopes and Launch Context"): how a scope
string is read, which scopes cover which, and what a scope lets a client do.

    system/<ResourceType or *>.<permissions>

The permissions are SMART v2 letters from ``cruds``, in that order (``rs``: read and
search), or the SMART v1 words ``read`` (the same as ``rs``), ``write`` (``cud``) and
``*`` (everything). Resource types and permissions compare case-insensitively: Da Vinci
DTR 2.0.1 spells the scopes ``system/questionnaire.rs``, FHIR ``system/Questionnaire.rs``.
A scope of another shape (``patient/...``, ``launch``, v2 scopes with query parameters
such as ``?category=...``) is not a system scope here: it is never granted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SYSTEM_SCOPE = re.compile(
    r"system/(?P<type>\*|[A-Za-z]{1,64})\.(?P<permissions>\*|read|write|c?r?u?d?s?)",
    re.IGNORECASE,
)
_V1_PERMISSIONS = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset("cruds"),
}
# What reading a resource type through the payer operations takes: read and search.
READ_PERMISSIONS = frozenset("rs")


@dataclass(frozen=True, slots=True)
class SystemScope:
    """A parsed system scope: a resource type (lower case, or ``*``) and permissions."""

    resource_type: str
    permissions: frozenset[str]

    def covers(self, other: SystemScope) -> bool:
        """Whether a client holding this scope may be granted ``other``."""
        return (
            self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
        )

    def permits(self, resource_type: str, needed: frozenset[str] = READ_PERMISSIONS) -> bool:
        """Whether this scope lets its holder do ``needed`` on ``resource_type``."""
        return self.resource_type in ("*", resource_type.lower()) and needed <= self.permissions


def parse_system_scope(text: str) -> SystemScope | None:
    """The system scope ``text`` spells, or None when it is not one."""
    found = _SYSTEM_SCOPE.fullmatch(text)
    if found is None or not found.group("permissions"):
        return None
    permissions = found.group("permissions").lower()
    return SystemScope(
        resource_type=found.group("type").lower(),
        permissions=_V1_PERMISSIONS.get(permissions, frozenset(permissions)),
    )


def granted_scopes(requested: str, configured: list[str]) -> list[str]:
    """The scopes of ``requested`` (space-separated) that one of ``configured`` covers,
    each once, in the client's own spelling and order."""
    allowed = [scope for scope in map(parse_system_scope, configured) if scope is not None]
    granted: list[str] = []
    seen: set[SystemScope] = set()
    for text in requested.split(" "):
        scope = parse_system_scope(text)
        if scope is None or scope in seen:
            continue
        if any(holder.covers(scope) for holder in allowed):
            granted.append(text)
            seen.add(scope)
    return granted


def scopes_permit(scopes: str, resource_type: str) -> bool:
    """Whether any of ``scopes`` (space-separated, as granted) permits reading
    ``resource_type``."""
    return any(
        scope is not None and scope.permits(resource_type)
        for scope in map(parse_system_scope, scopes.split(" "))
    )
