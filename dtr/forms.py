"""The payer's DTR forms: one adaptive Questionnaire per indication rule, the questions it
can ask, and the answer ValueSets they bind. Pure: policy data in, FHIR R4 JSON out.

An adaptive form (SDC ``questionnaireAdaptive``) carries no items of its own: its
questions come one step at a time from ``$next-question`` (``dtr.adaptive``), which asks
only what could still change the order's outcome. What the form carries is its identity
(``url|version`` from ``hooks.questionnaire``, the policy's questionnaire version), its
effective period, where ``$next-question`` is served, and a narrative of what it decides.
The questions it may ask are the documentation items of the rule's criteria and of the
requirement rules that can apply with it; their ``linkId`` is the documentation item id,
as in the whole-policy Questionnaire, so one reader serves both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from functools import cache
from html import escape
from importlib import resources
from typing import Any

from coverage_policy.engine import logic_truth
from coverage_policy.model import DocumentationItem, FactValue, Policy, Rule, RuleKind, Truth
from hooks.questionnaire import (
    computable_name,
    item_core,
    matches_canonical,
    option_system,
    questionnaire_canonical,
    questionnaire_resource,
    rule_questionnaire_canonical,
    rule_questionnaire_id,
    terminology_base,
)

ADAPTIVE_EXTENSION = (
    "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-questionnaireAdaptive"
)


def indication_rules(policy: Policy) -> tuple[Rule, ...]:
    return tuple(rule for rule in policy.rules if rule.kind is RuleKind.INDICATION)


def rule_for_canonical(policy: Policy, canonical: str) -> Rule | None:
    """The indication rule whose form ``canonical`` (``url`` or ``url|version``) names."""
    for rule in indication_rules(policy):
        url, _, version = rule_questionnaire_canonical(policy, rule.id).partition("|")
        if matches_canonical({"url": url, "version": version}, canonical):
            return rule
    return None


def _scope_facts(rule: Rule) -> dict[str, FactValue]:
    """What a rule's scope fixes by equality (``episode.pump_kind == implantable``)."""
    node = rule.applies_when
    leaves = node.get("all", [node])
    return {
        leaf["fact"]: FactValue(leaf["value"])
        for leaf in leaves
        if isinstance(leaf, Mapping) and leaf.get("op") == "eq" and "fact" in leaf
    }


def requirements_with(policy: Policy, rule: Rule, as_of: date) -> tuple[Rule, ...]:
    """The requirement rules that can apply together with indication ``rule``: every one
    whose scope is not ruled out by what the indication's scope fixes."""
    known = _scope_facts(rule)
    return tuple(
        other
        for other in policy.rules
        if other.kind is RuleKind.REQUIREMENT
        and logic_truth(policy, other.applies_when, known, as_of) is not Truth.UNMET
    )


def form_items(policy: Policy, rule: Rule, as_of: date) -> tuple[DocumentationItem, ...]:
    """Every question the form of ``rule`` may ask, in the policy's criterion order."""
    ids: list[str] = []
    for source in (rule, *requirements_with(policy, rule, as_of)):
        for criterion_id in source.criteria:
            ids += [d for d in policy.criteria[criterion_id].documentation if d not in ids]
    return tuple(policy.documentation[d] for d in ids)


def valueset_canonical(policy: Policy, item: DocumentationItem) -> str:
    """``url|version`` of a choice item's answer ValueSet (DTR oper-16: version-specific)."""
    _, version = questionnaire_canonical(policy)
    return f"{terminology_base(policy)}/ValueSet/{item.id}|{version}"


def answer_valueset(
    policy: Policy, item: DocumentationItem, expanded_at: datetime
) -> dict[str, Any]:
    """The ValueSet of a choice item's answers, expanded (DTR oper-15: under 40 codes)."""
    url, _, version = valueset_canonical(policy, item).partition("|")
    system = option_system(policy, item)
    concepts = [{"code": code, "display": display} for code, display in item.options]
    return {
        "resourceType": "ValueSet",
        "id": item.id,
        "url": url,
        "version": version,
        "name": computable_name(item.id),
        "title": f"Answers: {item.text}"[:200],
        "status": "active",
        "compose": {"include": [{"system": system, "concept": concepts}]},
        "expansion": {
            "timestamp": expanded_at.isoformat(),
            "total": len(concepts),
            "contains": [{"system": system, **concept} for concept in concepts],
        },
    }


def answer_valuesets(policy: Policy, expanded_at: datetime) -> dict[str, dict[str, Any]]:
    """Every answer ValueSet any form binds, by ``url``."""
    sets = (
        answer_valueset(policy, item, expanded_at)
        for item in policy.documentation.values()
        if item.answer_type == "choice"
    )
    return {valueset["url"]: valueset for valueset in sets}


def question(policy: Policy, item: DocumentationItem) -> dict[str, Any]:
    """One documentation item as an adaptive form's question: required, a choice bound
    to its ValueSet (no enableWhen: adaptive forms decide what comes next on the server)."""
    entry = {**item_core(policy, item), "required": True}
    if item.answer_type == "choice":
        entry["answerValueSet"] = valueset_canonical(policy, item)
    return entry


@cache
def form_text() -> dict[str, Any]:
    """What the forms, the DTR operations and the documentation app (``["app"]``) say to
    people (``dtr/form_text.json``)."""
    raw = resources.files("dtr").joinpath("form_text.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(raw).items() if not k.startswith("$")}


def _narrative(rule: Rule, items: tuple[DocumentationItem, ...]) -> dict[str, str]:
    words = form_text()
    if items:
        asked = "".join(f"<li>{escape(item.text)}</li>" for item in items)
        body = words["narrative_asks"].format(title=escape(rule.title), items=asked)
    else:
        body = words["narrative_nothing"].format(title=escape(rule.title))
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def rule_form(
    policy: Policy,
    rule: Rule,
    next_question_base: str,
    as_of: date,
    publisher: str | None = None,
) -> dict[str, Any]:
    """The adaptive Questionnaire of one indication rule, as ``$questionnaire-package``
    and ``Questionnaire/<id>`` serve it; its narrative lists the questions it may ask on
    ``as_of``."""
    url, _, version = rule_questionnaire_canonical(policy, rule.id).partition("|")
    form = questionnaire_resource(
        policy,
        form_id=rule_questionnaire_id(policy, rule.id),
        canonical=(url, version),
        title=form_text()["form_title"].format(rule=rule.title, policy=policy.id)[:200],
        description=form_text()["form_description"].format(
            rule_id=rule.id, policy=policy.id, version=policy.version
        ),
        publisher=publisher,
    )
    form["text"] = _narrative(rule, form_items(policy, rule, as_of))
    form["extension"] = [{"url": ADAPTIVE_EXTENSION, "valueUrl": next_question_base}]
    return form
