"""Resolve a request's prefetch: what the client sent, and what it did not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hooks.request import NOT_SENT, ClinicalInput, HookRequest
from hooks.service import ServiceDefinition


_ABSENT = object()


def resolve_prefetch(
    service: ServiceDefinition, hook_request: HookRequest, settings: Mapping[str, Any]
) -> ClinicalInput:
    """Keep the prefetch the client satisfied; mark every other template key unavailable."""
    data: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for key in service.prefetch:
        value = hook_request.prefetch.get(key, _ABSENT)
        if value is _ABSENT:
            unavailable[key] = NOT_SENT
        elif isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            unavailable[key] = "the EHR reported an error for this query"
        else:
            data[key] = value
    return ClinicalInput(data=data, unavailable=unavailable)
