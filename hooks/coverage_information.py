"""Decisions → Da Vinci CRD coverage-information system actions, in the requested dialect.

One ``update`` per in-scope order, adding the ``ext-coverage-information`` extension and
changing nothing else (CRD resp-37), in the dialect of ``hooks.crd_dialect``.

Invariants honoured in every dialect: ``pa-needed`` whenever not ``not-covered`` and never
with it (q2 of 2.0.1 and of 2.2); ``info-needed`` with every ``conditional`` (q3); a
``reason`` with every ``doc-purpose`` and ``OTH`` (q6, q8); a ``questionnaire`` only with
``doc-needed`` (q1). On secondary hooks (order-select) no clinical or administrative
documentation is asked for (CRD hook-19).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from coverage_policy.model import Decision, Outcome, Policy
from hooks.cards import card_text, data_names, decisive_result, missing_needs
from hooks.crd_dialect import TEMP_SYSTEM, CrdDialect
from hooks.decide import CoverageRef, EpisodeDecision
from hooks.questionnaire import rule_questionnaire_canonical

EXTENSION_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"


@dataclass(frozen=True, slots=True)
class AssertionContext:
    policy: Policy
    crd: CrdDialect
    secondary_hook: bool
    coverage: CoverageRef
    assertion_id: str
    today: date
    payer_name: str
    not_retrieved: Mapping[str, str]  # prefetch key -> why a query failed to bring it


def _sub(url: str, kind: str, value: Any) -> dict[str, Any]:
    return {"url": url, kind: value}


def _detail(
    ctx: AssertionContext, code: str, category: str, kind: str, value: Any
) -> dict[str, Any]:
    parts = []
    if ctx.crd.detail_has_category:
        parts.append(_sub("category", "valueCode", category))
    parts.append(
        _sub(
            "code",
            "valueCodeableConcept",
            {"coding": [{"system": ctx.crd.detail_code_system, "code": code}]},
        )
    )
    parts.append(_sub("value", kind, value))
    return {"url": "detail", "extension": parts}


def _missing_criteria(decision: Decision) -> list[str]:
    ids: list[str] = []
    for needs in missing_needs(decision):
        ids += [c for c in needs.criterion_ids() if c not in ids]
    return ids


def _doc_types(criterion_ids: list[str], policy: Policy) -> list[str]:
    """Who must supply what is missing: admin items are admin, everything else clinical."""
    types = set()
    for criterion_id in criterion_ids:
        items = policy.criteria[criterion_id].documentation
        types |= {policy.documentation[d].doc_type for d in items} if items else {"clinical"}
    return sorted(types)


def _instructions(criterion_ids: list[str], policy: Policy) -> str:
    """What to document, in the criteria's words (the questionnaire names the items)."""
    return "; ".join(policy.criteria[c].text for c in criterion_ids)


def coverage_information(item: EpisodeDecision, ctx: AssertionContext) -> dict[str, Any]:
    """The ``ext-coverage-information`` extension for one decision."""
    return coverage_information_for(item.decision, ctx)


def coverage_information_for(decision: Decision, ctx: AssertionContext) -> dict[str, Any]:
    """The ``ext-coverage-information`` extension for a decision (an order's, or one a
    DTR form reached)."""
    policy = ctx.policy
    reasons = card_text()["reason"]
    covered = decision.outcome.value
    if decision.provisional and ctx.crd.indeterminate_allowed:
        covered = Outcome.INDETERMINATE.value
    parts = [
        _sub("coverage", "valueReference", {"reference": ctx.coverage.reference}),
        _sub("covered", "valueCode", covered),
    ]
    if covered != Outcome.NOT_COVERED:
        parts.append(_sub("pa-needed", "valueCode", "no-auth"))
    missing = _missing_criteria(decision) if covered != Outcome.NOT_COVERED else []
    doc_types = _doc_types(missing, policy)
    asks_documentation = bool(missing) and not ctx.secondary_hook
    if asks_documentation:
        if ctx.crd.doc_needed_repeats:
            parts += [_sub("doc-needed", "valueCode", t) for t in doc_types]
        else:
            parts.append(
                _sub("doc-needed", "valueCode", "both" if len(doc_types) > 1 else doc_types[0])
            )
        parts.append(_sub("doc-purpose", "valueCode", "withclaim"))
    if covered in (Outcome.CONDITIONAL, Outcome.INDETERMINATE):
        parts.append(_sub("info-needed", "valueCode", "OTH"))
    reason_text = (
        reasons["not-covered"].format(message=decisive_result(decision).rule.messages[covered])
        if covered == Outcome.NOT_COVERED
        else reasons["not-checked"].format(
            data=data_names(ctx.not_retrieved), rule=decision.rule_id, policy=policy.id
        )
        if decision.provisional
        else reasons["conditional"].format(rule=decision.rule_id, policy=policy.id)
        if covered == Outcome.CONDITIONAL
        else None
    )
    if covered == Outcome.INDETERMINATE:
        # CRD 2.2: an outcome a technical failure left open says so (crd-ci-q9, resp-43).
        reason = {"coding": [{"system": TEMP_SYSTEM, "code": "technical"}], "text": reason_text}
        parts.append(_sub("reason", "valueCodeableConcept", reason))
    elif reason_text:
        parts.append(_sub("reason", "valueCodeableConcept", {"text": reason_text[:1000]}))
    parts.append(_detail(ctx, "policy-link", "cat-other", ctx.crd.link_value_type, policy.url))
    if asks_documentation:
        instructions = _instructions(missing, policy)
        parts.append(_detail(ctx, "instructions", "cat-decisional", "valueString", instructions))
        if any(policy.criteria[c].documentation for c in missing):
            form = rule_questionnaire_canonical(policy, decision.rule_id)
            parts.append(_sub("questionnaire", "valueCanonical", form))
    parts.append(_sub("date", "valueDate", ctx.today.isoformat()))
    parts.append(_sub("coverage-assertion-id", "valueString", ctx.assertion_id))
    return {"url": EXTENSION_URL, "extension": parts}


def coverage_system_actions(
    decisions: tuple[EpisodeDecision, ...], ctx: AssertionContext
) -> tuple[list[dict[str, Any]], tuple[str | None, ...]]:
    """One ``update`` per in-scope order, the order unchanged but for the extension; and
    per decision the assertion id it was issued under (None when every order of it
    already carried the same decision, so nothing was issued)."""
    actions = []
    issued: list[str | None] = []
    description = card_text()["action"]["coverage-information"].format(payer=ctx.payer_name)
    for item in decisions:
        extension = coverage_information(item, ctx)
        updated = False
        for order in item.episode.orders:
            resource = json.loads(json.dumps(dict(order.raw)))  # a copy: JSON in, JSON out
            existing = resource.get("extension") or []
            ours = [e for e in existing if _for_coverage(e, ctx.coverage.reference)]
            if any(_same_assertion(e, extension) for e in ours):
                continue  # the order already carries this decision: nothing new (resp-29/35)
            # Another payer's (another Coverage's) assertions stay on the order (resp-37/46).
            kept = [e for e in existing if not _for_coverage(e, ctx.coverage.reference)]
            resource["extension"] = [*kept, extension]
            actions.append({"type": "update", "description": description, "resource": resource})
            updated = True
        issued.append(ctx.assertion_id if updated else None)
    return actions, tuple(issued)


def _for_coverage(extension: Any, coverage_reference: str) -> bool:
    """Whether ``extension`` is a coverage-information extension about this Coverage."""
    if not isinstance(extension, dict) or extension.get("url") != EXTENSION_URL:
        return False
    return any(
        isinstance(part, dict)
        and part.get("url") == "coverage"
        and (part.get("valueReference") or {}).get("reference") == coverage_reference
        for part in extension.get("extension") or []
    )


_PER_ASSERTION = ("date", "coverage-assertion-id")


def _same_assertion(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """The same decision, whatever its date and assertion id."""

    def essence(extension: dict[str, Any]) -> list[Any]:
        return [p for p in extension.get("extension") or [] if p.get("url") not in _PER_ASSERTION]

    return essence(previous) == essence(current)
