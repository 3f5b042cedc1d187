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
    PreconditionResult,
    RecordedCriterion,
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
        self.forced_answers: Truth | None = None  # every doc.* leaf taken as this truth
        self.scopes: dict[str, tuple[Truth, tuple[Evidence, ...]]] = {}

    # -- fact leaves -----------------------------------------------------------------
    def leaf(self, node: Mapping[str, Any]) -> tuple[Truth, tuple[Evidence, ...]]:
        if self.forced_answers is not None and node["fact"].startswith("doc."):
            return self.forced_answers, ()
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
        if op == "on_or_before":
            return (_MET if value <= self.as_of else _UNMET), fact.evidence
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
        answered = self.forced_answers is not None or (
            answer_fact is not None and answer_fact.value not in (None, ())
        )
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
            if_answered = (
                (self._answered_as(criterion, _MET), self._answered_as(criterion, _UNMET))
                if truth is _UNKNOWN and criterion.documentation
                else None
            )
            self.cache[criterion_id] = CriterionResult(
                criterion, truth, tuple(evidence), True, checked, if_answered
            )
        result = self.cache[criterion_id]
        if result.deciding != deciding:
            return replace(result, deciding=deciding)
        return result

    def answers_hold(self, criterion: Criterion) -> Truth:
        """Whether the answers given to ``criterion``'s items hold (every doc.* leaf of it
        met), fail (every one unmet), or neither."""
        truths = {self.leaf(node)[0] for node in _doc_leaves(criterion.logic)}
        return truths.pop() if len(truths) == 1 else _UNKNOWN

    def _answered_as(self, criterion: Criterion, answers: Truth) -> Truth:
        forced = _Evaluator(self.policy, self.facts, self.as_of, self.not_retrieved)
        forced.forced_answers = answers
        return forced.logic(criterion.logic, [])

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
        results = tuple(self.criterion(cid, cid in rule.deciding) for cid in rule.criteria)
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


def _doc_leaves(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "fact" in node:
        return [node] if node["fact"].startswith("doc.") else []
    if "answer" in node:
        return _doc_leaves(node["answer"]) + _doc_leaves(node["record"])
    children = node.get("all") or node.get("any") or ([node["not"]] if "not" in node else [])
    return [leaf for child in children for leaf in _doc_leaves(child)]


# ``facts_that_may_be_read`` by policy, order date and known values: a few order kinds
# a day make nearly every call a repeat. The policy is kept so an id is never reused.
_MAY_BE_READ: dict[tuple[int, date, tuple[tuple[str, Any], ...]], tuple[Policy, frozenset[str]]]
_MAY_BE_READ = {}
_MAY_BE_READ_SIZE = 4096


def facts_that_may_be_read(policy: Policy, known: Facts, as_of: date) -> frozenset[str]:
    """The facts a decision could read, knowing only ``known`` (the rest unknown).

    Every rule whose scope is not already ruled out by ``known`` counts, with the facts of
    its scope and of its criteria. Sound because three-valued logic is monotone: a rule
    whose scope is unmet on partial facts is unmet whatever the rest turns out to be."""
    key = (id(policy), as_of, tuple(sorted((name, fact.value) for name, fact in known.items())))
    try:
        cached = _MAY_BE_READ.get(key)
    except TypeError:  # a value that cannot be a key (none of the order facts)
        return _facts_that_may_be_read(policy, known, as_of)
    if cached is not None and cached[0] is policy:
        return cached[1]
    found = _facts_that_may_be_read(policy, known, as_of)
    if len(_MAY_BE_READ) >= _MAY_BE_READ_SIZE:
        _MAY_BE_READ.clear()
    _MAY_BE_READ[key] = (policy, found)
    return found


def _facts_that_may_be_read(policy: Policy, known: Facts, as_of: date) -> frozenset[str]:
    if not policy.effective.contains(as_of):
        return frozenset()
    evaluator = _Evaluator(policy, known, as_of, frozenset())
    read: set[str] = set()
    for rule in policy.rules:
        if not rule.effective.contains(as_of):
            continue
        if evaluator.logic(rule.applies_when, []) is _UNMET:
            continue
        read |= rule.scope_facts
        for criterion_id in rule.criteria:
            read |= set(policy.criteria[criterion_id].facts)
    return frozenset(read)


def check_preconditions(policy: Policy, facts: Facts, as_of: date) -> PreconditionResult | None:
    """The first of the policy's preconditions that holds for an order of ``as_of`` (no
    coverage is then decided on it), or None. Checked whatever the order's date, before
    any rule: only a precondition met stops the decision, so one whose fact could not be
    had (unknown) lets the order be decided."""
    evaluator = _Evaluator(policy, facts, as_of)
    for precondition in policy.preconditions:
        evidence: list[Evidence] = []
        if evaluator.logic(precondition.when, evidence) is _MET:
            value = facts.get(precondition.fact, FactValue(None)).value
            return PreconditionResult(precondition, value, tuple(evidence))
    return None


def _decision(evaluator: _Evaluator, indication: Rule, rules: list[Rule]) -> Decision:
    """The decision under ``indication`` with the requirement and guidance rules among
    ``rules``: the most severe outcome of the indication and the requirements."""
    decided = evaluator.rule(indication)
    requirements = tuple(evaluator.rule(r) for r in rules if r.kind is RuleKind.REQUIREMENT)
    guidance = tuple(evaluator.rule(r) for r in rules if r.kind is RuleKind.GUIDANCE)
    outcome = max((decided.outcome, *(r.outcome for r in requirements)), key=_SEVERITY.__getitem__)
    return Decision(
        policy_id=evaluator.policy.id,
        policy_version=evaluator.policy.version,
        outcome=outcome,
        indication=decided,
        requirements=requirements,
        guidance=guidance,
        as_of=evaluator.as_of,
    )


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
    return _decision(evaluator, indication, applicable)


def _top_answer_node(criterion: Criterion) -> bool:
    return "answer" in criterion.logic


def _scope_candidates(rule: Rule) -> list[dict[str, FactValue]]:
    """Every assignment of the facts a rule's scope pins to a few values (``eq``, ``in``
    leaves of its top ``all``): one of them holds for an order the rule decided."""
    node = rule.applies_when
    leaves = node.get("all", [node])
    choices = [
        (leaf["fact"], [leaf["value"]] if leaf["op"] == "eq" else list(leaf["values"]))
        for leaf in leaves
        if isinstance(leaf, Mapping) and leaf.get("op") in ("eq", "in") and "fact" in leaf
    ]
    assignments: list[dict[str, FactValue]] = [{}]
    for fact, values in choices:
        assignments = [{**a, fact: FactValue(v)} for a in assignments for v in values]
    return assignments


def _settled_by_scope(
    policy: Policy,
    indication: Rule,
    criterion: Criterion,
    earlier: Truth,
    answers: Facts,
    as_of: date,
) -> Truth:
    """A criterion mixing order facts and documentation (``drug is X, or drug is Y and
    documented Z``) that the answers alone leave unknown: try each value the rule's scope
    allows for the order facts, keep those that give the earlier truth unanswered, and
    if all of them agree on the answered truth, that is it."""
    unanswered = {**answers, **{f"doc.{d}": FactValue(None) for d in criterion.documentation}}
    found: set[Truth] = set()
    for candidate in _scope_candidates(indication):
        if (
            _Evaluator(policy, {**unanswered, **candidate}, as_of).logic(criterion.logic, [])
            is not earlier
        ):
            continue
        found.add(_Evaluator(policy, {**answers, **candidate}, as_of).logic(criterion.logic, []))
    return found.pop() if len(found) == 1 else _UNKNOWN


def redecide(
    policy: Policy,
    rule_ids: tuple[str, ...],
    known: Mapping[str, RecordedCriterion],
    answers: Facts,
    as_of: date,
) -> Decision | None:
    """Decide again from an earlier decision's criterion truths and new documentation.

    For a DTR client that is not the EHR, the record itself is not at hand: what is
    known is the earlier decision's rules (``rule_ids``, indication first), what it
    recorded of each criterion (``known``), and the answers given since (``doc.*``
    facts). A criterion reading no documentation keeps its truth. One that does is
    evaluated on the answers with the record unknown; by monotonicity of three-valued
    logic a definite result is the result the record would give too, except that a
    record showing an answer-or-record criterion met outweighs the answer (the earlier
    truth says so). If the answers leave it unknown, its recorded ``if_answered`` says
    what the record made of answers that hold or do not; without one, the values the
    rule's scope allows for the order facts are tried; else it stays unknown (only a
    decision on the record can tell). Unanswered, it keeps its earlier truth."""
    chosen = [policy.rules_by_id[r] for r in rule_ids if r in policy.rules_by_id]
    indication = next((r for r in chosen if r.kind is RuleKind.INDICATION), None)
    if indication is None:
        return None
    evaluator = _Evaluator(policy, answers, as_of)
    for rule in chosen:
        for criterion_id in rule.criteria:
            if criterion_id in evaluator.cache:
                continue
            criterion = policy.criteria[criterion_id]
            recorded = known.get(criterion_id, RecordedCriterion(_UNKNOWN))
            truth, checked = recorded.truth, recorded.checked
            evidence: list[Evidence] = []
            if criterion.documentation and not (truth is _MET and _top_answer_node(criterion)):
                answered = any(
                    answers.get(f"doc.{item}", FactValue(None)).value is not None
                    for item in criterion.documentation
                )
                partial = evaluator.logic(criterion.logic, evidence)
                if partial is not _UNKNOWN:
                    truth, checked = partial, True
                elif (
                    answered
                    and recorded.if_answered
                    and evaluator.answers_hold(criterion) is not _UNKNOWN
                ):
                    holds = evaluator.answers_hold(criterion)
                    truth = recorded.if_answered[0 if holds is _MET else 1]
                elif answered:
                    truth = _settled_by_scope(policy, indication, criterion, truth, answers, as_of)
            evaluator.cache[criterion_id] = CriterionResult(
                criterion, truth, tuple(evidence), True, checked
            )
    return _decision(evaluator, indication, chosen)


def logic_truth(policy: Policy, node: Mapping[str, Any], facts: Facts, as_of: date) -> Truth:
    """The truth of one logic tree (a rule's scope, say) on partial facts."""
    return _Evaluator(policy, facts, as_of).logic(node, [])
