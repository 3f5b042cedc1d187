"""order-sign: the primary hook. Decide every pump episode among the draft orders."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from coverage_policy.model import Policy
from hooks.decide import OrderScope, deliberate, find_scope
from hooks.request import ClinicalInput, HookRequest
from hooks.respond import CONFIGURATION_OPTIONS, build_response
from hooks.service import (
    ENCOUNTER_PREFETCH,
    PATIENT_PREFETCH,
    HookEnvironment,
    HookResult,
    ServiceDefinition,
)

HOOK = "order-sign"
MAX_DRAFT_ORDERS = 100

CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["userId", "patientId", "draftOrders"],
    "properties": {
        "userId": {"type": "string", "minLength": 1},
        "patientId": {"type": "string", "minLength": 1},
        "encounterId": {"type": "string", "minLength": 1},
        "draftOrders": {
            "type": "object",
            "required": ["resourceType"],
            # Orders signed together are a handful; a cap keeps one request's work bounded.
            "properties": {
                "resourceType": {"const": "Bundle"},
                "entry": {"type": "array", "maxItems": MAX_DRAFT_ORDERS},
            },
        },
    },
}


def draft_order_scope(
    request: HookRequest, read: Mapping[str, Any], policy: Policy, today: date
) -> OrderScope:
    """The draft orders of the context (order-sign, order-select)."""
    return find_scope(request.context["draftOrders"], "context.draftOrders", policy, today)


def handle(
    request: HookRequest,
    scope: OrderScope,
    clinical: ClinicalInput,
    environment: HookEnvironment,
) -> HookResult:
    deliberation = deliberate(request, clinical, scope, environment.policy, environment.now.date())
    return build_response(request, deliberation, environment, secondary_hook=False)


SERVICE = ServiceDefinition(
    id="infusion-pump-coverage-order-sign",
    hook=HOOK,
    title="Infusion pump coverage (MCS051.01)",
    description=(
        "Decides Medicare Advantage coverage of infusion pump orders and of drugs given by "
        "infusion pump under MCS051.01 (NCD 280.14, LCD L33794) when the orders are signed: "
        "coverage guidance with the evidence behind it, what to document, covered "
        "alternatives, and a CRD coverage-information system action on each pump order."
    ),
    usage_requirements=(
        "Send the draft orders and, ideally, every prefetch key. Keys not sent are fetched "
        "from fhirServer with fhirAuthorization (read access to Patient, Coverage, Condition, "
        "MedicationRequest, Observation, AllergyIntolerance, Device, Encounter, Procedure, "
        "QuestionnaireResponse); without either, decisions are conditional on what is missing."
    ),
    prefetch={**PATIENT_PREFETCH, **ENCOUNTER_PREFETCH},
    context_schema=CONTEXT_SCHEMA,
    scope=draft_order_scope,
    handler=handle,
    configuration_options=CONFIGURATION_OPTIONS,
)
