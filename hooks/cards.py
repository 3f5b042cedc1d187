"""Decisions → CDS Hooks cards: coverage guidance, documentation prompts, alternatives.

Card types and their CRD response-type topics (``source.topic``), each switchable by the
``davinci-crd.configuration`` option of the same code:

- ``guideline``: the coverage decision, with its criteria, citations and evidence, and
  links to the policy, NCD 280.14 and LCD L33794 (an External Reference card);
- ``claim``: what to document so the order can be covered (an Instructions card);
- ``therapy-alternatives-req`` / ``-opt``: covered alternatives as suggestions;
- ``insurance``: the request carries no Coverage, so coverage could not be confirmed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from coverage_policy.model import CriterionResult, Needs, Outcome, Policy, RuleResult, Truth
from fhir_mappings.codes import HCPCS
from fhir_mappings.episodes import InvalidOrderInScope, PumpEpisode
from hooks.crd_dialect import CrdDialect
from hooks.decide import Deliberation, EpisodeDecision

CARD_TYPE_DISPLAYS = {
    "guideline": "Guideline",
    "claim": "Claim",
    "therapy-alternatives-req": "Therapy alternatives required",
    "therapy-alternatives-opt": "Therapy alternatives optional",
    "insurance": "Insurance",
}


@cache
def card_text() -> dict[str, Any]:
    text = resources.files("hooks").joinpath("card_text.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class CardContext:
    """What every card of one response shares."""

    policy: Policy
    payer_name: str
    crd: CrdDialect
    new_uuid: Callable[[], str]
    questionnaire_link: str

    def source(self, card_type: str) -> dict[str, Any]:
        return {
            "label": self.payer_name,
            "url": self.policy.url,
            "topic": {
                "system": self.crd.card_type_system,
                "code": card_type,
                "display": CARD_TYPE_DISPLAYS[card_type],
            },
        }

    def links(self) -> list[dict[str, str]]:
        sources = [self.policy.sources[self.policy.id], *self.policy.links]
        return [{"label": s.label, "url": s.url, "type": "absolute"} for s in sources]

    def override_reasons(self) -> list[dict[str, str]]:
        return [
            {
                "system": card_text()["override_reason_system"],
                "code": r["code"],
                "display": r["display"],
            }
            for r in card_text()["override_reasons"]
        ]


def summary(key: str, **values: str) -> str:
    """A card summary from the wording data, kept under CDS Hooks' 140 characters."""
    text = str(card_text()["summary"][key]).format(**values)
    return text if len(text) < 140 else text[:136].rstrip() + "..."


def _citations(result: CriterionResult, policy: Policy) -> str:
    return "; ".join(c.render(policy.sources) for c in result.criterion.citations)


def _evidence_text(evidence: tuple[Any, ...]) -> str:
    return "; ".join(f"{e.summary} ({e.reference})" for e in evidence)


def _criterion_line(result: CriterionResult, policy: Policy) -> str:
    line = f"- {result.criterion.text}. *{_citations(result, policy)}*."
    if not result.criterion.facts:  # decided by the policy alone, whatever the record says
        return line
    return f"{line} Seen: {_evidence_text(result.evidence) or card_text()['detail']['no_evidence']}"


def _rule_section(result: RuleResult, policy: Policy) -> list[str]:
    words = card_text()["detail"]
    lines = []
    for truth, heading in ((Truth.UNMET, words["unmet"]), (Truth.UNKNOWN, words["unknown"])):
        relevant = [r for r in result.results if r.deciding and r.truth is truth]
        if relevant:
            lines += [f"**{heading}**", *(_criterion_line(r, policy) for r in relevant), ""]
    met = [r for r in result.results if r.deciding and r.truth is Truth.MET]
    if met:
        lines.append(f"**{words['met']}**: " + "; ".join(r.criterion.text for r in met))
        lines.append("")
    advisory = [r for r in result.results if not r.deciding]
    for r in advisory:
        truth = words["truth"][r.truth.value]
        lines.append(f"*{r.criterion.text}*: {truth}. *{_citations(r, policy)}*")
    if advisory:
        lines.append("")
    return lines


def guidance_message(guidance: RuleResult, indication: Outcome) -> str:
    """A guidance rule's message for its truth; its "-if-not-covered" variant, where the
    policy gives one, when the indication is not covered (e.g. no Part B for a pump drug
    whose pump the LCD does not cover)."""
    messages = guidance.rule.messages
    if indication is Outcome.NOT_COVERED:
        return messages.get(
            f"{guidance.truth.value}-if-not-covered", messages[guidance.truth.value]
        )
    return messages[guidance.truth.value]


def coverage_card(
    item: EpisodeDecision, deliberation: Deliberation, ctx: CardContext
) -> dict[str, Any]:
    decision = item.decision
    words = card_text()["detail"]
    indication = decision.indication
    rule = indication.rule
    lines = [f"**{rule.title}** ({rule.id}): {rule.messages[indication.outcome.value]}", ""]
    if indication.scope_evidence:
        lines += [f"**{words['order']}**: {_evidence_text(indication.scope_evidence)}", ""]
    lines += _rule_section(indication, ctx.policy)
    for requirement in decision.requirements:
        lines += [
            f"**{words['requirements']}: {requirement.rule.title}** ({requirement.rule.id}): "
            f"{requirement.rule.messages[requirement.outcome.value]}",
            "",
        ]
        lines += _rule_section(requirement, ctx.policy)
    if decision.guidance:
        lines.append(f"**{words['guidance']}**")
        lines += [
            f"- {g.rule.title}: {guidance_message(g, indication.outcome)}"
            for g in decision.guidance
        ]
        lines.append("")
    if deliberation.record.unavailable:
        lines.append(
            f"**{words['unavailable']}**: "
            + "; ".join(
                f"{key} ({reason})"
                for key, reason in sorted(deliberation.record.unavailable.items())
            )
        )
        lines.append("")
    if deliberation.problems:
        lines.append(
            f"**{words['left_out']}**: "
            + "; ".join(
                f"{p.resource_type}/{p.resource_id} at {p.path}" for p in deliberation.problems
            )
        )
    card: dict[str, Any] = {
        "uuid": ctx.new_uuid(),
        "summary": summary(
            decision.outcome.value, label=item.episode.label, policy=decision.policy_id
        ),
        "detail": "\n".join(lines).strip(),
        "indicator": "info" if decision.outcome is Outcome.COVERED else "warning",
        "source": ctx.source("guideline"),
        "links": ctx.links(),
    }
    if decision.outcome is not Outcome.COVERED:
        card["overrideReasons"] = ctx.override_reasons()
    return _associate(card, item.episode)


def _associate(card: dict[str, Any], episode: PumpEpisode) -> dict[str, Any]:
    """CRD dev-24/25: say which orders a card is about."""
    card["extension"] = {
        "davinci-crd.associated-resource": [{"reference": o.reference} for o in episode.orders]
    }
    return card


def _needs_lines(needs: Needs | str, policy: Policy, depth: int = 0) -> list[str]:
    words = card_text()["detail"]
    indent = "  " * depth
    if isinstance(needs, str):
        criterion = policy.criteria[needs]
        form = (
            (
                f" (form item{'s' if len(criterion.documentation) > 1 else ''} "
                f"{', '.join(f'`{d}`' for d in criterion.documentation)})"
            )
            if criterion.documentation
            else ""
        )
        return [f"{indent}- {criterion.text}{form}"]
    lines = [f"{indent}- {words['all_of' if needs.mode == 'all' else 'one_of']}:"]
    for item in needs.items:
        lines += _needs_lines(item, policy, depth + 1)
    return lines


def missing_needs(decision: Any) -> list[Needs]:
    return [r.missing for r in decision.deciding_results if r.missing is not None]


def documentation_card(item: EpisodeDecision, ctx: CardContext) -> dict[str, Any] | None:
    needs = missing_needs(item.decision)
    if item.decision.outcome is not Outcome.CONDITIONAL or not needs:
        return None
    words = card_text()["detail"]
    lines = [words["documentation_intro"].format(label=item.episode.label), ""]
    for need in needs:
        for top in need.items if need.mode == "all" else (need,):
            lines += _needs_lines(top, ctx.policy)
    lines += ["", words["questionnaire"].format(questionnaire=ctx.questionnaire_link)]
    card = {
        "uuid": ctx.new_uuid(),
        "summary": summary("documentation", label=item.episode.label),
        "detail": "\n".join(lines),
        "indicator": "info",
        "source": ctx.source("claim"),
    }
    return _associate(card, item.episode)


def _device_resource(episode: PumpEpisode, hcpcs: str, display: str) -> dict[str, Any]:
    """A draft DeviceRequest for ``hcpcs``: the ordered one with only its code changed,
    or a new one for the same patient when the drug was ordered alone."""
    code = {"coding": [{"system": HCPCS, "code": hcpcs, "display": display}], "text": display}
    if episode.device is not None:
        resource = dict(episode.device.raw)
        resource.pop("codeReference", None)
        resource["codeCodeableConcept"] = code
        return resource
    order = episode.drug_order.raw if episode.drug_order else {}
    resource = {
        "resourceType": "DeviceRequest",
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": code,
        "subject": order.get("subject"),
    }
    for key in ("encounter", "requester", "authoredOn"):
        if key in order:
            resource[key] = order[key]
    if episode.drug_order is not None:
        resource["basedOn"] = [{"reference": episode.drug_order.reference}]
    return {k: v for k, v in resource.items() if v is not None}


def _suggestion(alternative: Any, episode: PumpEpisode, ctx: CardContext) -> dict[str, Any] | None:
    actions = card_text()["action"]
    if alternative.action == "remove-device":
        if episode.device is None:
            return None
        action = {
            "type": "delete",
            "description": actions["remove-device"],
            "resourceId": episode.device.reference,
        }
    elif episode.device is not None:
        action = {
            "type": "update",
            "description": actions["replace-device"].format(
                display=alternative.display,
                hcpcs=alternative.hcpcs,
                ordered=episode.hcpcs or "the ordered pump",
            ),
            "resource": _device_resource(episode, alternative.hcpcs, alternative.display),
        }
    else:
        action = {
            "type": "create",
            "description": actions["create-device"].format(
                display=alternative.display, hcpcs=alternative.hcpcs
            ),
            "resource": _device_resource(episode, alternative.hcpcs, alternative.display),
        }
    return {"label": alternative.label, "uuid": ctx.new_uuid(), "actions": [action]}


def alternatives_card(item: EpisodeDecision, ctx: CardContext) -> dict[str, Any] | None:
    rule = item.decision.indication.rule
    if not rule.alternatives or item.decision.outcome is Outcome.COVERED:
        return None
    suggestions = [
        s
        for s in (
            _suggestion(ctx.policy.alternatives[a], item.episode, ctx) for a in rule.alternatives
        )
        if s
    ]
    if not suggestions:
        return None
    required = item.decision.outcome is Outcome.NOT_COVERED
    card_type = "therapy-alternatives-req" if required else "therapy-alternatives-opt"
    reason = rule.messages[item.decision.indication.outcome.value]
    card = {
        "uuid": ctx.new_uuid(),
        "summary": summary(
            "alternatives-req" if required else "alternatives-opt", label=item.episode.label
        ),
        "detail": card_text()["detail"]["alternatives"].format(reason=reason),
        "indicator": "warning" if required else "info",
        "source": ctx.source(card_type),
        "suggestions": suggestions,
        "selectionBehavior": "at-most-one",
        "overrideReasons": ctx.override_reasons(),
    }
    return _associate(card, item.episode)


def deceased_card(episode: PumpEpisode, died: Any, ctx: CardContext) -> dict[str, Any]:
    words = card_text()["detail"]
    shown = words["deceased_unknown_date"] if died == date.min else died.isoformat()
    card = {
        "uuid": ctx.new_uuid(),
        "summary": summary("deceased", label=episode.label),
        "detail": words["deceased"].format(date=shown),
        "indicator": "warning",
        "source": ctx.source("guideline"),
    }
    return _associate(card, episode)


def invalid_order_card(order: InvalidOrderInScope, ctx: CardContext) -> dict[str, Any]:
    """An in-scope order that is not valid FHIR: said, not decided (no system action)."""
    return {
        "uuid": ctx.new_uuid(),
        "summary": summary("invalid-order", label=order.label[:1].upper() + order.label[1:]),
        "detail": card_text()["detail"]["invalid-order"].format(
            reference=order.reference, message=order.problem.message
        ),
        "indicator": "warning",
        "source": ctx.source("guideline"),
        "extension": {"davinci-crd.associated-resource": [{"reference": order.reference}]},
    }


def coverage_unconfirmed_card(ctx: CardContext) -> dict[str, Any]:
    return {
        "uuid": ctx.new_uuid(),
        "summary": summary("coverage-unconfirmed", payer=ctx.payer_name),
        "detail": card_text()["detail"]["coverage-unconfirmed"].format(payer=ctx.payer_name),
        "indicator": "info",
        "source": ctx.source("insurance"),
    }


def build_cards(
    deliberation: Deliberation, ctx: CardContext, enabled: Mapping[str, bool], max_cards: int
) -> list[tuple[dict[str, Any], int | None]]:
    """Every card of the response, most important first, within ``max_cards``, each with
    the index of the decision it is about (None for a card about the whole call)."""
    cards: list[tuple[int, dict[str, Any], int | None]] = []
    for position, item in enumerate(deliberation.decisions):
        severity = {Outcome.NOT_COVERED: 0, Outcome.CONDITIONAL: 1}.get(item.decision.outcome, 3)
        if enabled["guideline"]:
            cards.append((severity, coverage_card(item, deliberation, ctx), position))
        alternatives = alternatives_card(item, ctx)
        if alternatives and enabled[alternatives["source"]["topic"]["code"]]:
            cards.append((severity, alternatives, position))
        documentation = documentation_card(item, ctx)
        if documentation and enabled["claim"]:
            cards.append((2, documentation, position))
    for episode, died in deliberation.deceased:
        if enabled["guideline"]:
            cards.append((0, deceased_card(episode, died, ctx), None))
    for invalid in deliberation.invalid_in_scope:
        cards.append((0, invalid_order_card(invalid, ctx), None))
    if deliberation.decisions and deliberation.coverage is None and enabled["insurance"]:
        cards.append((4, coverage_unconfirmed_card(ctx), None))
    cards.sort(key=lambda entry: entry[0])
    return [(card, position) for _, card, position in cards[:max_cards]]
