"""Evaluate the policy: facts + the order date → a decision with a per-criterion trace.

Three-valued (Kleene) logic: ``all`` is unmet if any part is unmet, met if all are met,
else unknown; ``any`` the dual; ``not`` swaps met and unmet. A fact whose data could not
be had is unknown; a fact looked for and not found takes the leaf's ``absent`` truth
(unknown unless the policy says otherwise); a code the record shows only unconfirmed
(provisional, differential, a device of unknown status) is unknown, whatever ``absent``
says. Nothing here raises on missing data.

An explicit answer decides: ``{"answer": <leaf on a doc.* fact>, "record": <logic>}`` is
met when the record shows it met; otherwise, once the documentation item is answered,
it is what the answer says (an answer "no" is unmet whatever the record does not show);
unanswered, it is ``any`` of the two.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from typing import Any

from coverage_policy.model import (
    CodedItem,
    Criterion,
    CriterionResult,
    Decision,
    Evidence,
    FactValue,
    Needs,
    Outcome,
    Policy,
    Rule,
    RuleKind,
    RuleResult,
    Truth,
)

Facts = Mapping[str, FactValue]
_MET, _UNMET, _UNKNOWN = Truth.MET, Truth.UNMET, Truth.UNKNOWN


def truth_all(truths: list[Truth]) -> Truth:
    if _UNMET in truths:
        return _UNMET
    return _UNKNOWN if _UNKNOWN in truths else _MET


def truth_any(truths: list[Truth]) -> Truth:
    if _MET in truths:
        return _MET
    return _UNKNOWN if _UNKNOWN in truths else _UNMET


def truth_not(truth: Truth) -> Truth:
    return {_MET: _UNMET, _UNMET: _MET, _UNKNOWN: _UNKNOWN}[truth]


def truth_of(node: Mapping[str, Any], criterion_truths: Mapping[str, Truth]) -> Truth:
    """A rule's ``decides`` tree from its criteria's truths (as the audit trail records
    them); a criterion not among them is unknown."""
    if "all" in node:
        return truth_all([truth_of(child, criterion_truths) for child in node["all"]])
    if "any" in node:
        return truth_any([truth_of(child, criterion_truths) for child in node["any"]])
    if "not" in node:
        return truth_not(truth_of(node["not"], criterion_truths))
    if "const" in node:
        return Truth(node["const"])
    return criterion_truths.get(node.get("criterion", ""), _UNKNOWN)


def code_in_valueset(valueset: Mapping[str, Any], system: str, code: str) -> bool:
    """Exact codes per system, and prefixes per system (ICD-10-CM categories)."""
    if code in valueset.get("codes", {}).get(system, ()):
        return True
    normalized = code.replace(".", "").upper()
    return any(
        normalized.startswith(prefix.replace(".", "").upper())
        for prefix in valueset.get("prefixes", {}).get(system, ())
    )


def months_before(day: date, months: int) -> date:
    """The same day ``months`` calendar months earlier (the month's last day if shorter):
    6 months before 2026-11-20 is 2026-05-20, before 2026-08-31 it is 2026-02-28."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "eq":
        return bool(actual == expected)
    if op == "in":
        return bool(actual in expected)
    if not isinstance(actual, int | float) or isinstance(actual, bool):
        return False
    return {
        "gt": actual > expected,
        "gte": actual >= expected,
        "lt": actual < expected,
        "lte": actual <= expected,
    }[op] is True


class _Evaluator:
    """One evaluation: caches criterion results so shared criteria are decided once."""

    def __init__(
        self,
        policy: Policy,
        facts: Facts,
        as_of: date,
        not_retrieved: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = policy
        self.facts = facts
        self.as_of = as_of
        self.not_retrieved = not_retrieved
        self.cache: dict[str, CriterionResult] = {}
        self.scopes: dict[str, tuple[Truth, tuple[Evidence, ...]]] = {}

    # -- fact leaves -----------------------------------------------------------------
    def leaf(self, node: Mapping[str, Any]) -> tuple[Truth, tuple[Evidence, ...]]:
        fact = self.facts.get(node["fact"])
        if fact is None:
            return _UNKNOWN, ()
        value = fact.value
        if value is None or value == ():
            return Truth(node.get("absent", "unknown")), fact.evidence
        op = node["op"]
        if op == "exists":
            return _MET, fact.evidence
        if op == "is_true":
            return (_MET if value is True else _UNMET), fact.evidence
        if op == "has_code":
            return self._has_code(node, value, fact)
        if op == "within_days":
            days = (self.as_of - value).days
            return (_MET if 0 <= days <= node["value"] else _UNMET), fact.evidence
        if op == "within_months":
            earliest = months_before(self.as_of, node["value"])
            return (_MET if earliest <= value <= self.as_of else _UNMET), fact.evidence
        expected = node["values"] if op == "in" else node["value"]
        return (_MET if _compare(op, value, expected) else _UNMET), fact.evidence

    def _has_code(
        self, node: Mapping[str, Any], items: tuple[CodedItem, ...], fact: FactValue
    ) -> tuple[Truth, tuple[Evidence, ...]]:
        valueset = self.policy.valuesets[node["valueset"]]
        matches = [i for i in items if code_in_valueset(valueset, i.system, i.code)]
        active = tuple(i.evidence for i in matches if i.status == "active")
        if active:
            return _MET, active
        unconfirmed = tuple(i.evidence for i in matches if i.status == "unconfirmed")
        if unconfirmed:  # shown, but not confirmed (provisional, status unknown): unknown
            return _UNKNOWN, unconfirmed
        against = tuple(i.evidence for i in matches if i.status in ("inactive", "refuted"))
        if against:  # only resolved, inactive or refuted records of it: evidence against
            return _UNMET, against
        return Truth(node.get("absent", "unknown")), ()

    # -- logic trees -----------------------------------------------------------------
    def logic(self, node: Mapping[str, Any], evidence: list[Evidence]) -> Truth:
        if "all" in node:
            return truth_all([self.logic(child, evidence) for child in node["all"]])
        if "any" in node:
            return truth_any([self.logic(child, evidence) for child in node["any"]])
        if "not" in node:
            return truth_not(self.logic(node["not"], evidence))
        if "const" in node:
            return Truth(node["const"])
        if "criterion" in node:
            return self.criterion(node["criterion"]).truth
        if "answer" in node:
            return self.answer_or_record(node, evidence)
        truth, found = self.leaf(node)
        evidence.extend(e for e in found if e not in evidence)
        return truth

    def answer_or_record(self, node: Mapping[str, Any], evidence: list[Evidence]) -> Truth:
        """The record when it shows the criterion met, else the answer given, else either."""
        from_record: list[Evidence] = []
        record = self.logic(node["record"], from_record)
        answer_fact = self.facts.get(node["answer"]["fact"])
        answered = answer_fact is not None and answer_fact.value not in (None, ())
        from_answer: list[Evidence] = []
        answer = self.logic(node["answer"], from_answer)
        if record is _MET:
            shown, truth = from_record, _MET
        elif answered:
            shown, truth = from_answer + from_record, answer
        else:
            shown, truth = from_record + from_answer, truth_any([record, answer])
        evidence.extend(e for e in shown if e not in evidence)
        return truth

    def criterion(self, criterion_id: str, deciding: bool = True) -> CriterionResult:
        if criterion_id not in self.cache:
            criterion: Criterion = self.policy.criteria[criterion_id]
            evidence: list[Evidence] = []
            truth = self.logic(criterion.logic, evidence)
            checked = truth is not _UNKNOWN or not self.not_retrieved & set(criterion.facts)
            self.cache[criterion_id] = CriterionResult(
                criterion, truth, tuple(evidence), True, checked
            )
        result = self.cache[criterion_id]
        if result.deciding != deciding:
            return replace(result, deciding=deciding)
        return result

    def needs(self, node: Mapping[str, Any]) -> Needs | str | None:
        """The unknown part of a decision tree: what documenting would settle it. A
        criterion not checked (its data could not be retrieved) is not asked for."""
        if "criterion" in node:
            result = self.criterion(node["criterion"])
            return node["criterion"] if result.truth is _UNKNOWN and result.checked else None
        if "not" in node:
            return self.needs(node["not"])
        mode = "all" if "all" in node else "any" if "any" in node else None
        if mode is None or self.logic(node, []) is not _UNKNOWN:
            return None
        parts = [self.needs(child) for child in node[mode]]
        items = tuple(part for part in parts if part is not None)
        if len(items) == 1:
            return items[0]
        return Needs(mode, items) if items else None

    def rule(self, rule: Rule) -> RuleResult:
        truth = self.logic(rule.decides, [])
        deciding = _of_tree("criteria", rule.decides)
        results = tuple(self.criterion(cid, cid in deciding) for cid in rule.criteria)
        needs = self.needs(rule.decides) if truth is _UNKNOWN else None
        if isinstance(needs, str):
            needs = Needs("all", (needs,))
        _, scope = self.scope(rule)
        return RuleResult(rule, truth, OUTCOME_OF_TRUTH[truth], results, needs, scope)

    def scope(self, rule: Rule) -> tuple[Truth, tuple[Evidence, ...]]:
        """Whether ``rule`` applies, with the evidence saying so (decided once)."""
        if rule.id not in self.scopes:
            evidence: list[Evidence] = []
            self.scopes[rule.id] = (self.logic(rule.applies_when, evidence), tuple(evidence))
        return self.scopes[rule.id]

    def applies(self, rule: Rule) -> bool:
        # Only a definite "applies" selects a rule: an unknown scope is the business of
        # an earlier rule that asks for the missing fact (e.g. the pump kind).
        return rule.effective.contains(self.as_of) and self.scope(rule)[0] is _MET


# A rule's outcome from its truth (unknown: documentation could settle it).
OUTCOME_OF_TRUTH = {
    _MET: Outcome.COVERED,
    _UNMET: Outcome.NOT_COVERED,
    _UNKNOWN: Outcome.CONDITIONAL,
}
_SEVERITY = {Outcome.COVERED: 0, Outcome.CONDITIONAL: 1, Outcome.NOT_COVERED: 2}


def _criteria_in(node: Mapping[str, Any]) -> set[str]:
    if "criterion" in node:
        return {node["criterion"]}
    children = node.get("all") or node.get("any") or ([node["not"]] if "not" in node else [])
    return set().union(*(_criteria_in(child) for child in children)) if children else set()


# The criteria and the facts of each logic tree, by the tree's identity (policies are
# immutable once loaded; the tree is kept alongside so an id is never taken for another's).
_OF_TREE: dict[tuple[str, int], tuple[Mapping[str, Any], frozenset[str]]] = {}


def _of_tree(what: str, node: Mapping[str, Any]) -> frozenset[str]:
    known = _OF_TREE.get((what, id(node)))
    if known is None or known[0] is not node:
        found = _criteria_in(node) if what == "criteria" else _facts_in(node)
        known = (node, frozenset(found))
        _OF_TREE[(what, id(node))] = known
    return known[1]


def _facts_in(node: Mapping[str, Any]) -> set[str]:
    if "fact" in node:
        return {node["fact"]}
    children = node.get("all") or node.get("any") or ([node["not"]] if "not" in node else [])
    return set().union(*(_facts_in(child) for child in children)) if children else set()


def facts_that_may_be_read(policy: Policy, known: Facts, as_of: date) -> frozenset[str]:
    """The facts a decision could read, knowing only ``known`` (the rest unknown).

    Every rule whose scope is not already ruled out by ``known`` counts, with the facts of
    its scope and of its criteria. Sound because three-valued logic is monotone: a rule
    whose scope is unmet on partial facts is unmet whatever the rest turns out to be."""
    if not policy.effective.contains(as_of):
        return frozenset()
    evaluator = _Evaluator(policy, known, as_of, frozenset())
    read: set[str] = set()
    for rule in policy.rules:
        if not rule.effective.contains(as_of):
            continue
        if evaluator.logic(rule.applies_when, []) is _UNMET:
            continue
        read |= _of_tree("facts", rule.applies_when)
        for criterion_id in rule.criteria:
            read |= set(policy.criteria[criterion_id].facts)
    return frozenset(read)


def evaluate_policy(
    policy: Policy, facts: Facts, as_of: date, not_retrieved: frozenset[str] = frozenset()
) -> Decision | None:
    """Decide one pump episode. None when no indication rule of the policy applies.

    ``not_retrieved`` names the facts whose data could not be retrieved (as opposed to
    looked for and not found): a criterion left unknown by one of them is not checked."""
    evaluator = _Evaluator(policy, facts, as_of, not_retrieved)
    applicable = [rule for rule in policy.rules if evaluator.applies(rule)]
    indication = next((r for r in applicable if r.kind is RuleKind.INDICATION), None)
    if indication is None or not policy.effective.contains(as_of):
        return None
    decided = evaluator.rule(indication)
    requirements = tuple(evaluator.rule(r) for r in applicable if r.kind is RuleKind.REQUIREMENT)
    guidance = tuple(evaluator.rule(r) for r in applicable if r.kind is RuleKind.GUIDANCE)
    outcome = max((decided.outcome, *(r.outcome for r in requirements)), key=_SEVERITY.__getitem__)
    return Decision(
        policy_id=policy.id,
        policy_version=policy.version,
        outcome=outcome,
        indication=decided,
        requirements=requirements,
        guidance=guidance,
        as_of=as_of,
    )
