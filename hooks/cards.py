"""Decisions → CDS Hooks cards: coverage guidance, documentation prompts, alternatives.

Card types and their CRD response-type topics (``source.topic``), each switchable by the
``davinci-crd.configuration`` option of the same code:

- ``guideline``: the coverage decision, with its criteria, citations and evidence, and
  links to the policy, NCD 280.14 and LCD L33794 (an External Reference card);
- ``claim``: what to document so the order can be covered (an Instructions card);
- ``therapy-alternatives-req`` / ``-opt``: covered alternatives as suggestions;
- ``insurance``: the request carries no Coverage, so coverage could not be confirmed.

An order a policy precondition stops gets the card of the precondition's outcome
(``PRECONDITION_CARDS``, a ``guideline`` card) and no decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from coverage_policy.model import (
    CriterionResult,
    Decision,
    Needs,
    Outcome,
    Policy,
    PreconditionResult,
    RuleResult,
)
from fhir_mappings.codes import HCPCS
from fhir_mappings.episodes import InvalidOrderInScope, PumpEpisode
from fhir_mappings.patient import UNKNOWN_DATE_OF_DEATH
from hooks.crd_dialect import CrdDialect
from hooks.decide import Deliberation, EpisodeDecision
from hooks.request import NOT_SENT

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
    decision_page_url: str | None = None

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

    def links(self, position: int | None = None) -> list[dict[str, str]]:
        """The policy and its sources; with a decision page, the page first (the anchor
        of this decision on it)."""
        sources = [self.policy.sources[self.policy.id], *self.policy.links]
        links = [{"label": s.label, "url": s.url, "type": "absolute"} for s in sources]
        if self.decision_page_url and position is not None:
            label = card_text()["detail"]["details_link"]
            url = f"{self.decision_page_url}#decision-{position + 1}"
            links.insert(0, {"label": label, "url": url, "type": "absolute"})
        return links

    def override_reasons(self, item: EpisodeDecision) -> list[dict[str, str]]:
        """The reasons to go ahead that fit this decision: no "will document" where no
        documentation can change it, no "declined the alternative" where there is none."""
        decision = item.decision
        applies = {
            "always": True,
            "conditional": decision.outcome is Outcome.CONDITIONAL,
            "record-can-change": decision.outcome is Outcome.CONDITIONAL
            or any(r.criterion.facts for r in decision.against_coverage()),
            "has-alternative": bool(decision.indication.rule.alternatives),
        }
        if decision.outcome is Outcome.COVERED:
            return []
        return [
            {
                "system": card_text()["override_reason_system"],
                "code": r["code"],
                "display": r["display"],
            }
            for r in card_text()["override_reasons"]
            if applies[r["when"]]
        ]


def summary(key: str, **values: str) -> str:
    """A card summary from the wording data, kept under CDS Hooks' 140 characters."""
    text = str(card_text()["summary"][key]).format(**values)
    return text if len(text) < 140 else text[:136].rstrip() + "..."


def decisive_result(decision: Decision) -> RuleResult:
    """The rule result that gave the decision its outcome: the indication, unless a
    requirement is worse (a contraindication, a missing face-to-face encounter)."""
    return next(
        (r for r in decision.deciding_results if r.outcome is decision.outcome),
        decision.indication,
    )


def data_names(keys: Iterable[str]) -> str:
    """Prefetch keys in the words a clinician knows them by: "lab results, visits"."""
    names = card_text()["data_names"]
    return ", ".join(dict.fromkeys(names.get(key, key) for key in sorted(keys)))


def _seen(result: CriterionResult) -> str:
    words = card_text()["detail"]
    return "; ".join(e.summary for e in result.evidence) or words["no_evidence"]


def _finding(result: CriterionResult) -> str:
    return f"- {result.criterion.text}: {_seen(result)}"


def _section(heading: str, results: Iterable[CriterionResult]) -> list[str]:
    lines = [_finding(r) for r in results]
    return [f"**{heading}**", *lines, ""] if lines else []


def _findings(item: EpisodeDecision, documentation_follows: bool) -> list[str]:
    """Only what is against coverage or missing, each with what was seen; nothing about
    criteria that are met or that do not apply to this order."""
    decision = item.decision
    words = card_text()["detail"]
    if decision.outcome is Outcome.NOT_COVERED:
        # A criterion of the policy alone (nationally non-covered) is the reason already
        # given; only what the record showed is listed.
        against = [r for r in decision.against_coverage() if r.criterion.facts]
        return _section(words["unmet"], against)
    if decision.outcome is not Outcome.CONDITIONAL:
        return []
    missing = {c for needs in missing_needs(decision) for c in needs.criterion_ids()}
    results = {r.criterion.id: r for _, r in decision.criterion_rows()}
    if missing and documentation_follows:
        lines = [words["see_documentation"], ""]
    else:
        lines = _section(words["unknown"], (r for c, r in results.items() if c in missing))
    return lines + _section(words["not_checked"], decision.not_checked)


def coverage_card(
    item: EpisodeDecision,
    deliberation: Deliberation,
    ctx: CardContext,
    documentation_follows: bool = False,
    position: int | None = None,
) -> dict[str, Any]:
    """The decision and its reason in one sentence, then only what is against or missing.
    The whole per-criterion trace is on the decision page the card links to."""
    decision = item.decision
    words = card_text()["detail"]
    not_retrieved = deliberation.not_retrieved
    lines = []
    if decision.provisional:
        reasons = "; ".join(sorted(set(not_retrieved.values())))
        lines += [words["provisional"].format(data=data_names(not_retrieved), reasons=reasons), ""]
    reason = decisive_result(decision)
    lines += [
        f"**{words['outcome'][decision.outcome.value]}**: "
        f"{reason.rule.messages[decision.outcome.value]}",
        "",
    ]
    lines += _findings(item, documentation_follows)
    not_sent = [k for k, r in deliberation.record.unavailable.items() if r == NOT_SENT]
    if not_sent and decision.outcome is Outcome.CONDITIONAL:
        lines += [words["not_sent"].format(data=data_names(not_sent)), ""]
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
        "links": ctx.links(position),
    }
    reasons_offered = ctx.override_reasons(item)
    if reasons_offered:
        card["overrideReasons"] = reasons_offered
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
        # How to settle it where the form does not (or besides the form, for a fact an
        # item states): on the order itself, or in the record.
        stated = {f for d in criterion.documentation for f in policy.documentation[d].states}
        hints = [
            words["settle_hints"][f]
            for f in criterion.facts
            if f in words["settle_hints"] and (not criterion.documentation or f in stated)
        ]
        return [f"{indent}- {'; '.join([criterion.text, *hints])}"]
    lines = [f"{indent}- {words['all_of' if needs.mode == 'all' else 'one_of']}:"]
    for item in needs.items:
        lines += _needs_lines(item, policy, depth + 1)
    return lines


def missing_needs(decision: Decision) -> list[Needs]:
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
        "overrideReasons": ctx.override_reasons(item),
    }
    return _associate(card, item.episode)


def deceased_card(
    episode: PumpEpisode, precondition: PreconditionResult, ctx: CardContext
) -> dict[str, Any]:
    """The patient died on or before the order date (``precondition.value``)."""
    words = card_text()["detail"]
    died: date = precondition.value
    shown = words["deceased_unknown_date"] if died == UNKNOWN_DATE_OF_DEATH else died.isoformat()
    card = {
        "uuid": ctx.new_uuid(),
        "summary": summary("deceased", label=episode.label),
        "detail": words["deceased"].format(date=shown),
        "indicator": "warning",
        "source": ctx.source("guideline"),
    }
    return _associate(card, episode)


# The card of each outcome a policy precondition may have (policy.schema.json).
PRECONDITION_CARDS: dict[
    str, Callable[[PumpEpisode, PreconditionResult, CardContext], dict[str, Any]]
] = {"deceased": deceased_card}


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
        documentation = documentation_card(item, ctx) if enabled["claim"] else None
        if enabled["guideline"]:
            card = coverage_card(item, deliberation, ctx, documentation is not None, position)
            cards.append((severity, card, position))
        alternatives = alternatives_card(item, ctx)
        if alternatives and enabled[alternatives["source"]["topic"]["code"]]:
            cards.append((severity, alternatives, position))
        if documentation:
            cards.append((2, documentation, position))
    for episode, precondition in deliberation.stopped:
        if enabled["guideline"]:
            card = PRECONDITION_CARDS[precondition.outcome](episode, precondition, ctx)
            cards.append((0, card, None))
    for invalid in deliberation.invalid_in_scope:
        cards.append((0, invalid_order_card(invalid, ctx), None))
    if deliberation.decisions and deliberation.coverage is None and enabled["insurance"]:
        cards.append((4, coverage_unconfirmed_card(ctx), None))
    cards.sort(key=lambda entry: entry[0])
    return [(card, position) for _, card, position in cards[:max_cards]]
