"""Resolve a request's prefetch: what the client sent, and what we fetch ourselves.

For each prefetch key of the service the client did not satisfy (absent, or an
OperationOutcome), the template is rendered from the request context and queried on
``fhirServer`` with the client's access token, all keys in parallel under one deadline
(``cds_service.fhir_client``). A key that can be had neither way is listed in
``ClinicalInput.unavailable`` with a short reason: ``hooks.request.NOT_SENT`` when there
was nothing to fetch with (no ``fhirServer``/``fhirAuthorization``, or a template whose
token the context cannot fill), any other reason for a technical failure.

Rendering follows CDS Hooks 2.0: only ``{{context.<field>}}`` with a root-level primitive
value and the ``{{userPractitionerId}}``-style tokens derived from ``context.userId``.
A value that is not a plain FHIR id is never put into a URL. A paginated Bundle the client
sent is completed by following its ``next`` links (it counts as unavailable, its first
page kept, when that fails or cannot be done). Draft orders are never
fetched. Resources a service names in its context (``ServiceDefinition.context_reads``:
the dispatched orders of order-dispatch) are read by reference first when the prefetch
lacks them, since they say what the call is about.

Only the keys the call's decisions may read are resolved (``OrderScope.prefetch_keys``):
a call with no order in scope fetches nothing. A request with pump orders but no usable
patient data at all is answered 412 by the hook (``hooks.request.DataUnavailable``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from cds_service import operations
from cds_service.auth import ClientIdentity
from cds_service.errors import FhirQueryFailed
from cds_service.fhir_client import (
    NOT_ALLOWED,
    FhirReader,
    allowed_fhir_servers,
    fetch_all,
    fhir_server_allowed,
    next_link,
)
from cds_service.settings import Settings
from fhir_mappings.bundles import resources_by_reference
from fhir_mappings.facts import KEYS_FACTS_READ
from hooks.request import NOT_SENT, ClinicalInput, HookRequest
from hooks.service import ServiceDefinition

logger = logging.getLogger(__name__)

EHR_REPORTED_ERROR = "the EHR reported an error for this query"
ONLY_FIRST_PAGE = "the EHR sent only part of the results"

_ABSENT = object()
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The query with every token filled from ``context``, or None if one cannot be."""
    unrenderable = False

    def fill(match: re.Match[str]) -> str:
        nonlocal unrenderable
        value = _token_value(match.group(1), context)
        if value is None:
            unrenderable = True
            return ""
        return value

    rendered = _TOKEN.sub(fill, template)
    return None if unrenderable else rendered


def _token_value(token: str, context: Mapping[str, Any]) -> str | None:
    if token.startswith("context."):
        name = token.removeprefix("context.")
        value = context.get(name) if "." not in name else None
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        text = str(value)
    elif token in _USER_TOKENS:
        match = _REFERENCE.fullmatch(str(context.get("userId") or ""))
        if match is None or match.group(1) != _USER_TOKENS[token]:
            return None
        text = match.group(2)
    else:
        return None
    return text if _FHIR_ID.fullmatch(text) else None


def _usable(value: Any) -> bool:
    return not (isinstance(value, dict) and value.get("resourceType") == "OperationOutcome")


def read_context_resources(
    service: ServiceDefinition,
    hook_request: HookRequest,
    settings: Settings,
    client: ClientIdentity | None = None,
    started: float | None = None,
) -> dict[str, Mapping[str, Any]]:
    """The resources the service's context names, by reference: from the prefetch the
    client sent, else read from ``fhirServer``. One that can be had neither way is
    absent; the service says what that means for the call."""
    wanted = [r for r in service.context_reads(hook_request.context) if _REFERENCE.fullmatch(r)]
    if not wanted:
        return {}
    sent = resources_by_reference(v for v in hook_request.prefetch.values() if _usable(v))
    found = {r: sent[r] for r in wanted if r in sent}
    missing = {r: r for r in wanted if r not in found}
    if missing:
        started = time.monotonic() if started is None else started
        fetched = _fetch(hook_request, settings, client, missing, started) or {}
        for reference, result in fetched.items():
            if isinstance(result, dict):
                found[reference] = result
    return found


def resolve_prefetch(
    service: ServiceDefinition,
    hook_request: HookRequest,
    settings: Settings,
    client: ClientIdentity | None = None,
    *,
    keys: frozenset[str] | None = None,
    started: float | None = None,
) -> ClinicalInput:
    """Keep the prefetch the client satisfied, fetch the rest, mark what is still missing.

    Only keys some fact reads are fetched; ``keys`` limits them to those the call may
    read (all of them when None). ``started`` is when the call's FHIR deadline began
    (now when None)."""
    started = time.monotonic() if started is None else started
    data: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    wanted: dict[str, str] = {}
    paginated: dict[str, Mapping[str, Any]] = {}
    fetch_seconds = 0.0
    fetched_keys = KEYS_FACTS_READ if keys is None else keys & KEYS_FACTS_READ
    for key, template in service.prefetch.items():
        if key not in fetched_keys:
            continue
        value = hook_request.prefetch.get(key, _ABSENT)
        if value is not _ABSENT and _usable(value):
            data[key] = value
            if next_link(value) is not None:
                # Kept, but incomplete until its other pages are fetched.
                paginated[key] = value
                unavailable[key] = ONLY_FIRST_PAGE
            continue
        unavailable[key] = NOT_SENT if value is _ABSENT else EHR_REPORTED_ERROR
        query = render_template(template, hook_request.context)
        if query is not None:
            wanted[key] = query
    queries: dict[str, str | Mapping[str, Any]] = {**wanted, **paginated}

    if queries:
        fetch_started = time.monotonic()
        fetched = _fetch(hook_request, settings, client, queries, started)
        if fetched is not None:
            fetch_seconds = time.monotonic() - fetch_started
            for key, result in fetched.items():
                if isinstance(result, FhirQueryFailed):
                    unavailable[key] = result.reason
                else:
                    data[key] = result
                    unavailable.pop(key, None)

    return ClinicalInput(data=data, unavailable=unavailable, fetch_seconds=fetch_seconds)


def _fetch(
    hook_request: HookRequest,
    settings: Settings,
    client: ClientIdentity | None,
    queries: Mapping[str, str | Mapping[str, Any]],
    started: float,
) -> dict[str, Any] | None:
    """Run the queries on ``fhirServer``; None when there is nothing to fetch with."""
    base_url = hook_request.fhir_server
    authorization = hook_request.fhir_authorization
    if not base_url or authorization is None:
        return None
    if not fhir_server_allowed(
        base_url, allowed_fhir_servers(settings, client.issuer if client else None)
    ):
        logger.warning(
            "fhirServer not allowed for client %s; %d queries not made",
            client.issuer if client else "(unsigned)",
            len(queries),
        )
        operations.count_fhir_failures([FhirQueryFailed(NOT_ALLOWED)] * len(queries))
        return {key: FhirQueryFailed(NOT_ALLOWED) for key in queries}
    limits = settings.fhir_limits
    reader = FhirReader(
        base_url=base_url,
        access_token=authorization.access_token,
        deadline=started + limits.deadline_s,
        limits=limits,
    )
    results = fetch_all(reader, queries)
    failures = {k: r.detail for k, r in results.items() if isinstance(r, FhirQueryFailed)}
    logger.info(
        "fetched %d of %d prefetch queries in %.0f ms%s",
        len(results) - len(failures),
        len(results),
        (time.monotonic() - started) * 1000,
        f"; failed: {failures}" if failures else "",
    )
    return results
