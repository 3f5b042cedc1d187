"""Deliberation → the CDS Hooks response, honouring the client's CRD configuration."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from coverage_policy.model import Policy
from hooks.cards import CardContext, build_cards, card_text
from hooks.coverage_information import AssertionContext, coverage_system_actions
from hooks.decide import Deliberation
from hooks.questionnaire import rule_questionnaire_canonical
from hooks.request import HookRequest
from hooks.service import ConfigurationOption, HookEnvironment, HookResult, IssuedCard

# One boolean per card type the service emits, plus max-cards (CRD dev-4/5); wording is data.
CONFIGURATION_OPTIONS = tuple(
    ConfigurationOption(o["code"], o["type"], o["name"], o["description"], o["default"])
    for o in card_text()["configuration_options"]
)
_DEFAULTS = {option.code: option.default for option in CONFIGURATION_OPTIONS}


def effective_configuration(requested: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, overridden by the options the client set with the right JSON type.

    Unknown options and values of the wrong type are ignored (CRD dev-15, dev-17)."""
    configuration = dict(_DEFAULTS)
    for code, default in _DEFAULTS.items():
        value = requested.get(code)
        if (
            isinstance(default, bool)
            and isinstance(value, bool)
            or (
                not isinstance(default, bool)
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value >= 0
            )
        ):
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
    card_context = CardContext(
        policy=policy,
        payer_name=environment.payer_name,
        crd=hook_request.crd,
        new_uuid=environment.new_uuid,
        questionnaire_link=f"{environment.base_url}/fhir/Questionnaire/{policy.questionnaire_id}",
        decision_page_url=environment.decision_page_url,
    )
    cards = build_cards(deliberation, card_context, configuration, configuration["max-cards"])
    response: dict[str, Any] = {"cards": [card for card, _ in cards]}
    assertion_ids: tuple[str | None, ...] = (None,) * len(deliberation.decisions)
    if deliberation.decisions and deliberation.coverage and configuration["coverage-info"]:
        assertion = AssertionContext(
            policy=policy,
            crd=hook_request.crd,
            secondary_hook=secondary_hook,
            coverage=deliberation.coverage,
            assertion_id=environment.new_uuid(),
            today=environment.now.date(),
            payer_name=environment.payer_name,
            not_retrieved=deliberation.not_retrieved,
        )
        response["systemActions"], assertion_ids = coverage_system_actions(
            deliberation.decisions, assertion
        )
    if environment.documentation_app_url and configuration["dtr-app-link"]:
        _link_documentation_app(
            cards, deliberation, assertion_ids, environment.documentation_app_url, policy
        )
    return HookResult(
        response,
        deliberation.decisions,
        assertion_ids,
        tuple(_issued(card, position) for card, position in cards),
    )


def _link_documentation_app(
    cards: list[tuple[dict[str, Any], int | None]],
    deliberation: Deliberation,
    assertion_ids: tuple[str | None, ...],
    launch_url: str,
    policy: Policy,
) -> None:
    """A ``smart`` link on each documentation card to the payer's documentation app, with
    the decision's coverage-assertion-id, orders and form as its ``appContext``. A
    deliberate deviation, opt-in: CRD 2.x launches DTR from coverage-information."""
    for card, position in cards:
        if position is None or card["source"]["topic"]["code"] != "claim":
            continue
        item = deliberation.decisions[position]
        context = {
            "coverage-assertion-id": assertion_ids[position],
            "orders": [order.reference for order in item.episode.orders],
            "questionnaire": rule_questionnaire_canonical(policy, item.rule_id),
        }
        link = {
            "label": card_text()["documentation_app_link"],
            "url": launch_url,
            "type": "smart",
            "appContext": json.dumps({k: v for k, v in context.items() if v}),
        }
        card["links"] = [*card.get("links", []), link]


def _issued(card: Mapping[str, Any], position: int | None) -> IssuedCard:
    return IssuedCard(
        uuid=str(card["uuid"]).lower(),
        card_type=card["source"]["topic"]["code"],
        indicator=card["indicator"],
        suggestion_uuids=tuple(str(s["uuid"]).lower() for s in card.get("suggestions", ())),
        decision=position,
    )
