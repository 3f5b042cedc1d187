"""order-select: a secondary hook. Early guidance on the selected pump orders only.

Coverage information here never asks for clinical or administrative documentation
(CRD hook-19); that is for order-sign.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hooks.decide import OrderScope, deliberate
from hooks.order_sign import CONTEXT_SCHEMA as ORDER_SIGN_CONTEXT
from hooks.order_sign import draft_order_scope
from hooks.request import ClinicalInput, HookRequest
from hooks.respond import CONFIGURATION_OPTIONS, build_response
from hooks.service import (
    ENCOUNTER_PREFETCH,
    PATIENT_PREFETCH,
    HookEnvironment,
    HookResult,
    ServiceDefinition,
)

HOOK = "order-select"

CONTEXT_SCHEMA: dict[str, Any] = {
    **ORDER_SIGN_CONTEXT,
    "required": ["userId", "patientId", "selections", "draftOrders"],
    "properties": {
        **dict(ORDER_SIGN_CONTEXT["properties"]),
        "selections": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    },
}


def handle(
    request: HookRequest,
    scope: OrderScope,
    clinical: ClinicalInput,
    environment: HookEnvironment,
) -> HookResult:
    deliberation = deliberate(request, clinical, scope, environment.policy, environment.now.date())
    selected = set(request.context["selections"])
    focused = replace(
        deliberation,
        decisions=tuple(
            d
            for d in deliberation.decisions
            if any(o.reference in selected for o in d.episode.orders)
        ),
        stopped=tuple(
            (e, precondition)
            for e, precondition in deliberation.stopped
            if any(o.reference in selected for o in e.orders)
        ),
        invalid_in_scope=tuple(o for o in deliberation.invalid_in_scope if o.reference in selected),
    )
    return build_response(request, focused, environment, secondary_hook=True)


SERVICE = ServiceDefinition(
    id="infusion-pump-coverage-order-select",
    hook=HOOK,
    title="Infusion pump coverage, early guidance (MCS051.01)",
    description=(
        "Early coverage guidance on infusion pump orders as they are selected, before they are "
        "complete; the full decision with documentation needs comes at order-sign."
    ),
    usage_requirements=(
        "Same data as the order-sign service; guidance focuses on the selected orders."
    ),
    prefetch={**PATIENT_PREFETCH, **ENCOUNTER_PREFETCH},
    context_schema=CONTEXT_SCHEMA,
    scope=draft_order_scope,
    handler=handle,
    configuration_options=CONFIGURATION_OPTIONS,
)
