"""Parse and validate a CDS Hooks request body into a ``HookRequest``.

Lenient where the specification says be liberal (unknown members ignored, prefetch
values may be null, absent, an OperationOutcome or a Bundle), strict where it must be
(the hook matches the service, ``hookInstance`` is a UUID, the hook's own context, and
``fhirServer`` whenever ``fhirAuthorization`` is sent). Every failure is a ``BadRequest``
naming what is wrong and where.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from cds_service.errors import BadRequest
from cds_service.json_input import NESTED_TOO_DEEPLY, UnreadableJson, loads_untrusted
from cds_service.schema_issues import schema_issues
from hooks.request import FhirAuthorization, HookRequest


@cache
def _envelope_validator() -> Draft202012Validator:
    text = resources.files("cds_service").joinpath("schemas/hook_request.schema.json").read_text()
    return Draft202012Validator(json.loads(text))


def parse_json_body(raw: bytes) -> Any:
    """Decode the HTTP body, or raise ``BadRequest`` saying why it is not JSON."""
    if not raw:
        raise BadRequest.single("The request body is empty; a CDS Hooks request is a JSON object")
    try:
        return loads_untrusted(raw)
    except UnreadableJson as exc:
        if exc.reason == NESTED_TOO_DEEPLY:
            raise BadRequest.single("The request body nests JSON too deeply") from None
        raise BadRequest.single(f"The request body is {exc.reason}") from None


def parse_hook_request(
    body: Any, *, expected_hook: str, context_validator: Draft202012Validator
) -> HookRequest:
    """Validate ``body`` for a service of ``expected_hook`` and return the request."""
    issues = schema_issues(_envelope_validator(), body)
    if issues:
        raise BadRequest(issues)
    if body["hook"] != expected_hook:
        raise BadRequest.single(
            f"hook '{body['hook']}' does not match this service, which answers '{expected_hook}'",
            "hook",
        )
    issues = schema_issues(context_validator, body["context"], prefix="context")
    if issues:
        raise BadRequest(issues)
    auth = body.get("fhirAuthorization")
    return HookRequest(
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch=body.get("prefetch") or {},
        fhir_server=body.get("fhirServer"),
        fhir_authorization=FhirAuthorization(
            access_token=auth["access_token"],
            token_type=auth["token_type"],
            scope=auth["scope"],
            subject=auth["subject"],
            patient=auth.get("patient"),
        )
        if auth
        else None,
        extension=body.get("extension") or {},
    )


# A request that reaches every pattern of the envelope schema: validating it once
# compiles them (``re`` caches compiled patterns per process).
_WARM_UP_BODY = {
    "hook": "order-sign",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "https://ehr.example.org/fhir",
    "fhirAuthorization": {
        "access_token": "x",
        "token_type": "Bearer",
        "expires_in": 30,
        "scope": "patient/*.read",
        "subject": "x",
    },
    "context": {
        "userId": "Practitioner/x",
        "patientId": "x",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []},
        "dispatchedOrders": ["ServiceRequest/x"],
        "selections": ["ServiceRequest/x"],
        "performer": "Organization/x",
    },
    "prefetch": {"patient": {"resourceType": "Patient"}, "coverage": None},
}


def preload_validators() -> None:
    """Build the envelope and every service's context validator now, and run each once
    (compiling their patterns); each is built on first use otherwise."""
    from hooks import SERVICES, context_validator

    validators = [(_envelope_validator(), _WARM_UP_BODY)] + [
        (context_validator(service), _WARM_UP_BODY["context"]) for service in SERVICES.values()
    ]
    for validator, document in validators:
        schema_issues(validator, document)  # compiles the quick check
        list(validator.iter_errors(document))  # jsonschema's, for the first invalid request
