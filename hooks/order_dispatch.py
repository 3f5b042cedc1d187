"""order-dispatch: decide the dispatched pump orders when a performer is chosen.

Accepts both context versions: 1.1 (``dispatchedOrders``, ``performer``,
``fulfillmentTasks``) and 1.0 as the CRD 2.0.1 test kit sends it (``order``,
``performer``, ``task``). The orders are not in the context: they are read by reference,
from the prefetch or from fhirServer, before anything else (they say what is decided).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from coverage_policy.model import Policy
from fhir_mappings.prefetch_keys import DEVICE_REQUESTS
from hooks import order_sign
from hooks.decide import OrderScope, find_scope
from hooks.order_sign import MAX_DRAFT_ORDERS
from hooks.request import DataUnavailable, HookRequest
from hooks.respond import CONFIGURATION_OPTIONS
from hooks.service import PATIENT_PREFETCH, ServiceDefinition

HOOK = "order-dispatch"

_REFERENCE = {"type": "string", "pattern": "^[A-Za-z]+/[A-Za-z0-9\\-.]{1,64}$"}
CONTEXT_SCHEMA = {
    "type": "object",
    "required": ["patientId", "performer"],
    "properties": {
        "patientId": {"type": "string", "minLength": 1},
        "performer": _REFERENCE,
        "dispatchedOrders": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_DRAFT_ORDERS,
            "items": _REFERENCE,
        },
        "order": _REFERENCE,
        "fulfillmentTasks": {"type": "array"},
        "fulfillment-tasks": {"type": "array"},
        "task": {"type": "object"},
    },
    "oneOf": [{"required": ["dispatchedOrders"]}, {"required": ["order"]}],
}


def dispatched_references(context: Mapping[str, Any]) -> list[str]:
    """The dispatched order references, whichever context version names them."""
    if "dispatchedOrders" in context:
        return list(context["dispatchedOrders"])
    return [context["order"]]


def dispatched_order_scope(
    request: HookRequest, read: Mapping[str, Any], policy: Policy, today: date
) -> OrderScope:
    """The dispatched orders, as read by reference (from the prefetch or fhirServer)."""
    references = dispatched_references(request.context)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": read[r]} for r in references if r in read],
    }
    if not bundle["entry"]:
        pump_related = [
            r for r in references if r.split("/")[0] in ("DeviceRequest", "MedicationRequest")
        ]
        if pump_related:
            raise DataUnavailable(
                f"The dispatched orders {', '.join(pump_related)} are neither in the prefetch nor "
                "retrievable from fhirServer",
                "context.dispatchedOrders",
            )
    return find_scope(bundle, "dispatchedOrders", policy, today)


SERVICE = ServiceDefinition(
    id="infusion-pump-coverage-order-dispatch",
    hook=HOOK,
    title="Infusion pump coverage at dispatch (MCS051.01)",
    description=(
        "Decides coverage of infusion pump orders when they are dispatched to a performer, "
        "with a CRD coverage-information system action on each dispatched pump order."
    ),
    usage_requirements=(
        "The dispatched orders are read from the 'deviceRequests' and 'medicationRequests' "
        "prefetch, or fetched from fhirServer; accepts order-dispatch context 1.0 and 1.1."
    ),
    prefetch={**PATIENT_PREFETCH, DEVICE_REQUESTS: "DeviceRequest?patient={{context.patientId}}"},
    context_schema=CONTEXT_SCHEMA,
    scope=dispatched_order_scope,
    handler=order_sign.handle,  # dispatched orders are decided as signed ones are
    context_reads=dispatched_references,
    configuration_options=CONFIGURATION_OPTIONS,
)
