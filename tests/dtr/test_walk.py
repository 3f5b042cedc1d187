"""The adaptive walk on every rule, without the service: which questions it asks, in
what order, and that each one could still change the outcome."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from html import escape
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coverage_policy.loader import load_policy
from coverage_policy.model import (
    FactValue,
    Outcome,
    Period,
    Policy,
    RecordedCriterion,
    Rule,
    Truth,
)
from dtr import forms
from dtr.adaptive import QR_CONTEXT, Knowledge, Step, initial_response, read_answers, step
from dtr.forms import form_items, indication_rules, requirements_with, rule_form

POLICY = load_policy()
AS_OF = date(2026, 11, 20)
RULES = [r for r in indication_rules(POLICY) if form_items(POLICY, r, AS_OF)]
# Criteria the form cannot settle without the record behind them (a body weight, the
# devices shown): the walk ends on them without an assertion, tested separately.
MIXED = ("IIP-CI-BODY-SIZE", "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE")


def _rules(rule: Rule) -> tuple[str, ...]:
    return (rule.id, *(r.id for r in requirements_with(POLICY, rule, AS_OF)))


def _criteria(rule_ids: tuple[str, ...]) -> list[str]:
    rules = {r.id: r for r in POLICY.rules}
    found: list[str] = []
    for rule_id in rule_ids:
        found += [c for c in rules[rule_id].criteria if c not in found]
    return found


def _record_shows_all_it_can(rule_ids: tuple[str, ...]) -> Knowledge:
    """A record that shows every criterion no documentation can settle met, and nothing
    of those documentation settles: what is left is the form's to ask."""
    known = {
        c: RecordedCriterion(Truth.MET)
        for c in _criteria(rule_ids)
        if not POLICY.criteria[c].documentation or c in MIXED
    }
    return Knowledge(rule_ids=rule_ids, known=known, as_of=AS_OF)


_DECIMALS = {
    "c-peptide-result": (0.3, 2.0),
    "c-peptide-lower-limit": (0.8, 0.8),
    "c-peptide-fasting-glucose": (100, 300),
    "creatinine-clearance": (90, 90),
}
# The setting a rule covers: heparin by pump is covered in an institution.
_SETTING = {"EIP-HEPARIN": ("institutional", "home")}


def _value(item_id: str, favourable: bool, rule_id: str = "") -> Any:
    item = POLICY.documentation[item_id]
    which = 0 if favourable else 1
    if item.answer_type == "boolean":
        return favourable
    if item.answer_type == "date":
        return AS_OF if favourable else date(2001, 1, 1)
    if item.answer_type == "decimal":
        return _DECIMALS[item_id][which]
    if item_id == "pump-kind":
        return "external"
    if item_id == "pump-use-setting":
        return _SETTING.get(rule_id, ("home", "institutional"))[which]
    codes = [code for code, _ in item.options]
    return codes[0] if favourable else codes[-1]


def _walk(policy: Policy, knowledge: Knowledge, favourable: bool) -> tuple[Step, list[str]]:
    answers = read_answers(policy, {})
    asked: list[str] = []
    for _ in range(len(policy.documentation) + 1):
        current = step(policy, knowledge, answers)
        assert current is not None
        if current.finished:
            return current, asked
        for item in current.asked:
            assert item.id not in asked, f"{item.id} asked twice"
            asked.append(item.id)
            answers[f"doc.{item.id}"] = FactValue(
                _value(item.id, favourable, knowledge.rule_ids[0])
            )
    raise AssertionError("the walk did not end")


@pytest.mark.parametrize(
    "rule", [r for r in RULES if r.id != "SCOPE-PUMP-KIND"], ids=lambda r: r.id
)
def test_favourable_answers_reach_covered(rule: Rule) -> None:
    done, asked = _walk(POLICY, _record_shows_all_it_can(_rules(rule)), favourable=True)
    assert done.decision.outcome is Outcome.COVERED
    assert asked
    assert set(asked) <= {i.id for i in form_items(POLICY, rule, AS_OF)}


@pytest.mark.parametrize(
    "rule", [r for r in RULES if r.id != "SCOPE-PUMP-KIND"], ids=lambda r: r.id
)
def test_unfavourable_answers_reach_not_covered(rule: Rule) -> None:
    done, asked = _walk(POLICY, _record_shows_all_it_can(_rules(rule)), favourable=False)
    assert done.decision.outcome is Outcome.NOT_COVERED
    # A "no" settles its rule: the first step is all that is asked.
    first = step(POLICY, _record_shows_all_it_can(_rules(rule)), read_answers(POLICY, {}))
    assert first is not None
    assert asked == [item.id for item in first.asked]


def test_an_any_asks_one_alternative_at_a_time() -> None:
    """CSII asks the autoantibody test (one question) rather than the C-peptide result
    (five), and of the two ways to show prior insulin management only the one with fewer
    questions (a pump before Medicare, with glucose self-testing), until it fails."""
    rule_ids = ("EIP-CSII",)
    known = {
        c: RecordedCriterion(Truth.MET)
        for c in _criteria(rule_ids)
        if not POLICY.criteria[c].documentation
    }
    known["EIP-CSII-C-PEPTIDE"] = RecordedCriterion(Truth.UNKNOWN)
    first = step(POLICY, Knowledge(rule_ids, known, AS_OF), read_answers(POLICY, {}))
    assert first is not None
    asked = [item.id for item in first.asked]
    assert "beta-cell-autoantibody-positive" in asked
    assert "c-peptide-result" not in asked
    assert "csii-pump-before-medicare" in asked
    assert "csii-diabetes-education" not in asked  # the other branch of an any


def test_the_pump_kind_moves_the_order_to_another_rule() -> None:
    knowledge = Knowledge(("SCOPE-PUMP-KIND",), {}, AS_OF)
    first = step(POLICY, knowledge, read_answers(POLICY, {}))
    assert first is not None
    assert [i.id for i in first.asked] == ["pump-kind"]
    answers = read_answers(POLICY, {})
    answers["doc.pump-kind"] = FactValue("external")
    done = step(POLICY, knowledge, answers)
    assert done is not None
    assert done.finished
    assert not done.asserts


def test_nothing_is_asked_for_a_criterion_not_checked() -> None:
    rule_ids = ("EIP-OTHER-INOTROPE",)
    known = {
        c: RecordedCriterion(Truth.MET)
        for c in _criteria(rule_ids)
        if not POLICY.criteria[c].documentation
    }
    known["EIP-OTHER-INOTROPE-STAGE-D"] = RecordedCriterion(Truth.UNKNOWN, False)
    first = step(POLICY, Knowledge(rule_ids, known, AS_OF), read_answers(POLICY, {}))
    assert first is not None
    assert "inotrope-heart-failure-stage-d" not in [i.id for i in first.asked]


_TRUTHS = st.builds(
    RecordedCriterion,
    st.sampled_from(list(Truth)),
    st.booleans(),
    st.one_of(st.none(), st.tuples(st.sampled_from(list(Truth)), st.sampled_from(list(Truth)))),
)


@settings(max_examples=300, deadline=None)
@given(
    rule=st.sampled_from(RULES),
    data=st.data(),
)
def test_no_question_asked_is_already_decided(rule: Rule, data: st.DataObject) -> None:
    """Whatever the record showed and whatever is answered: every question asked is
    unanswered, belongs to a criterion still open in a deciding rule, and is asked only
    while the outcome is conditional; the walk ends."""
    rule_ids = _rules(rule)
    known = {c: data.draw(_TRUTHS, label=c) for c in _criteria(rule_ids)}
    knowledge = Knowledge(rule_ids, known, AS_OF)
    answers = read_answers(POLICY, {})
    for _ in range(len(POLICY.documentation) + 1):
        current = step(POLICY, knowledge, answers)
        assert current is not None
        if current.finished:
            return
        decision = current.decision
        assert decision.outcome is Outcome.CONDITIONAL
        open_criteria = {
            c for r in decision.deciding_results if r.missing for c in r.missing.criterion_ids()
        }
        results = {r.criterion.id: r for rr in decision.deciding_results for r in rr.results}
        for item in current.asked:
            assert answers[f"doc.{item.id}"].value is None
            settles = [c for c in open_criteria if item.id in POLICY.criteria[c].documentation]
            assert settles, f"{item.id} settles nothing still open"
            assert all(results[c].truth is Truth.UNKNOWN and results[c].checked for c in settles)
            favourable = data.draw(st.booleans(), label=item.id)
            answers[f"doc.{item.id}"] = FactValue(_value(item.id, favourable))
    raise AssertionError("the walk did not end")


def test_a_draft_response_without_a_coverage_names_only_the_orders() -> None:
    rule = indication_rules(POLICY)[0]
    form = rule_form(POLICY, rule, "http://payer.example/fhir/Questionnaire", AS_OF)
    response = initial_response(
        POLICY,
        form,
        patient="Patient/p",
        coverage=None,
        orders=("DeviceRequest/d",),
        assertion_id=None,
        authored="2026-11-28T15:00:00+00:00",
    )
    contexts = [e["valueReference"] for e in response["extension"] if e["url"] == QR_CONTEXT]
    assert contexts == [{"reference": "DeviceRequest/d"}]


class _NoMachineDay(date):
    @classmethod
    def today(cls) -> date:
        raise AssertionError("the form read the machine's day")


@pytest.mark.parametrize("rule", RULES[:3], ids=lambda r: r.id)
def test_a_form_lists_the_questions_of_the_day_it_is_given(
    rule: Rule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy without an effective start: the form's day is its caller's, never the
    machine's (dtr is pure)."""
    monkeypatch.setattr(forms, "date", _NoMachineDay)
    undated = replace(POLICY, effective=Period(None, POLICY.effective.end))
    form = rule_form(undated, rule, "http://payer.example/fhir/Questionnaire", AS_OF)
    for item in form_items(undated, rule, AS_OF):
        assert escape(item.text) in form["text"]["div"]
