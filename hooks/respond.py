"""Deliberation → the CDS Hooks response, honouring the client's CRD configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hooks.cards import CardContext, build_cards
from hooks.coverage_information import AssertionContext, coverage_system_actions
from hooks.decide import Deliberation
from hooks.request import HookRequest
from hooks.service import ConfigurationOption, HookEnvironment, HookResult

CONFIGURATION_OPTIONS = (
    ConfigurationOption("coverage-info", "boolean", "Coverage Information",
                        "Record the coverage decision on each infusion pump order (CRD coverage-information system action)", True),
    ConfigurationOption("guideline", "boolean", "Coverage guidance",
                        "A card per pump order with the decision, each criterion's result, its citation and the evidence, and links to MCS051.01, NCD 280.14 and LCD L33794", True),
    ConfigurationOption("claim", "boolean", "Documentation needed",
                        "A card listing exactly what to document when coverage depends on documentation", True),
    ConfigurationOption("therapy-alternatives-req", "boolean", "Covered alternatives",
                        "Suggestions replacing a non-covered pump with a covered alternative (e.g. an elastomeric pump for vancomycin)", True),
    ConfigurationOption("therapy-alternatives-opt", "boolean", "Optional alternatives",
                        "Suggestions of alternatives when coverage is conditional", True),
    ConfigurationOption("insurance", "boolean", "Coverage not confirmed",
                        "A card saying so when the request carries no Coverage for the patient", True),
    ConfigurationOption("max-cards", "integer", "Maximum cards",
                        "The most cards returned, most important first", 10),
)
_DEFAULTS = {option.code: option.default for option in CONFIGURATION_OPTIONS}


def effective_configuration(requested: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, overridden by the options the client set with the right JSON type.

    Unknown options and values of the wrong type are ignored (CRD dev-15, dev-17)."""
    configuration = dict(_DEFAULTS)
    for code, default in _DEFAULTS.items():
        value = requested.get(code)
        if isinstance(default, bool) and isinstance(value, bool):
            configuration[code] = value
        elif (not isinstance(default, bool) and isinstance(value, int)
              and not isinstance(value, bool) and value >= 0):
            configuration[code] = value
    return configuration


def build_response(
    hook_request: HookRequest,
    deliberation: Deliberation,
    environment: HookEnvironment,
    *,
    secondary_hook: bool,
) -> HookResult:
    policy = environment.policy
    configuration = effective_configuration(hook_request.configuration)
    crd_version = hook_request.crd_version
    card_context = CardContext(
        policy=policy,
        payer_name=environment.payer_name,
        crd_version=crd_version,
        new_uuid=environment.new_uuid,
        questionnaire_link=f"{environment.base_url}/fhir/Questionnaire/{policy.questionnaire_id}",
    )
    response: dict[str, Any] = {
        "cards": build_cards(deliberation, card_context, configuration, configuration["max-cards"])
    }
    if deliberation.decisions and deliberation.coverage and configuration["coverage-info"]:
        assertion = AssertionContext(
            policy=policy,
            crd_version=crd_version,
            secondary_hook=secondary_hook,
            coverage=deliberation.coverage,
            assertion_id=environment.new_uuid(),
            today=environment.now.date(),
            payer_name=environment.payer_name,
            unavailable=dict(deliberation.record.unavailable),
        )
        response["systemActions"] = coverage_system_actions(deliberation.decisions, assertion)
    return HookResult(response, deliberation.decisions)
