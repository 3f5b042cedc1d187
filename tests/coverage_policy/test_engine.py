"""The evaluator: three-valued logic, operators, rule selection, needs, effective dates."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from coverage_policy.engine import (
    _Evaluator,
    check_preconditions,
    evaluate_policy,
    months_before,
    truth_all,
    truth_any,
    truth_not,
)
from coverage_policy.loader import build_policy, load_policy
from coverage_policy.model import CodedItem, Evidence, FactValue, Needs, Outcome, Truth

MET, UNMET, UNKNOWN = Truth.MET, Truth.UNMET, Truth.UNKNOWN
AS_OF = date(2026, 11, 28)


def evaluate_leaf(node: dict[str, Any], facts: dict[str, FactValue]) -> Truth:
    return _Evaluator(load_policy(), facts, AS_OF).logic(node, [])


@pytest.mark.parametrize(
    ("truths", "expected_all", "expected_any"),
    [
        ([MET, MET], MET, MET),
        ([MET, UNMET], UNMET, MET),
        ([MET, UNKNOWN], UNKNOWN, MET),
        ([UNMET, UNKNOWN], UNMET, UNKNOWN),
        ([UNKNOWN, UNKNOWN], UNKNOWN, UNKNOWN),
        ([UNMET, UNMET], UNMET, UNMET),
    ],
)
def test_kleene_all_and_any(truths: list[Truth], expected_all: Truth, expected_any: Truth) -> None:
    assert truth_all(truths) is expected_all
    assert truth_any(truths) is expected_any


def test_not_swaps_met_and_unmet_only() -> None:
    assert [truth_not(t) for t in (MET, UNMET, UNKNOWN)] == [UNMET, MET, UNKNOWN]


def test_fact_whose_data_could_not_be_had_is_unknown() -> None:
    node = {"fact": "lab.hba1c_percent", "op": "gt", "value": 7.0}
    assert evaluate_leaf(node, {}) is UNKNOWN


def test_fact_looked_for_and_not_found_takes_the_absent_truth() -> None:
    node = {"fact": "lab.hba1c_percent", "op": "gt", "value": 7.0}
    assert evaluate_leaf(node, {"lab.hba1c_percent": FactValue(None)}) is UNKNOWN
    assert (
        evaluate_leaf({**node, "absent": "unmet"}, {"lab.hba1c_percent": FactValue(None)}) is UNMET
    )


@pytest.mark.parametrize(
    ("op", "value", "fact", "expected"),
    [
        ("gt", 7.0, 7.1, MET),
        ("gt", 7.0, 7.0, UNMET),
        ("gte", 4, 4, MET),
        ("gte", 4, 3.9, UNMET),
        ("lt", 50, 49, MET),
        ("lt", 50, 50, UNMET),
        ("lte", 110, 110, MET),
        ("lte", 110, 110.1, UNMET),
        ("eq", "home", "home", MET),
        ("eq", "home", "institutional", UNMET),
    ],
)
def test_comparison_operators(op: str, value: Any, fact: Any, expected: Truth) -> None:
    name = "order.setting" if isinstance(value, str) else "lab.hba1c_percent"
    node = {"fact": name, "op": op, "value": value}
    assert evaluate_leaf(node, {name: FactValue(fact)}) is expected


def test_in_is_true_exists_and_within_days() -> None:
    assert (
        evaluate_leaf(
            {"fact": "order.setting", "op": "in", "values": ["home"]},
            {"order.setting": FactValue("home")},
        )
        is MET
    )
    flag = "doc.csii-diabetes-education"
    assert evaluate_leaf({"fact": flag, "op": "is_true"}, {flag: FactValue(True)}) is MET
    assert evaluate_leaf({"fact": flag, "op": "is_true"}, {flag: FactValue(False)}) is UNMET
    assert evaluate_leaf({"fact": flag, "op": "exists"}, {flag: FactValue(False)}) is MET
    visit = "encounter.last_visit_date"
    node = {"fact": visit, "op": "within_days", "value": 92}
    assert evaluate_leaf(node, {visit: FactValue(date(2026, 9, 1))}) is MET
    assert evaluate_leaf(node, {visit: FactValue(date(2026, 8, 1))}) is UNMET
    assert evaluate_leaf(node, {visit: FactValue(date(2026, 12, 1))}) is UNMET  # after the order


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 11, 20), 6, date(2026, 5, 20)),
        (date(2026, 8, 31), 6, date(2026, 2, 28)),
        (date(2028, 8, 31), 6, date(2028, 2, 29)),
        (date(2026, 3, 31), 6, date(2025, 9, 30)),
        (date(2026, 1, 15), 13, date(2024, 12, 15)),
    ],
)
def test_months_before_is_calendar_months(day: date, months: int, expected: date) -> None:
    assert months_before(day, months) == expected


def test_within_months_counts_calendar_months_up_to_the_order() -> None:
    f2f = "encounter.f2f_with_orderer_date"
    node = {"fact": f2f, "op": "within_months", "value": 6}
    assert evaluate_leaf(node, {f2f: FactValue(date(2026, 5, 28))}) is MET  # AS_OF 2026-11-28
    assert evaluate_leaf(node, {f2f: FactValue(date(2026, 11, 28))}) is MET
    assert evaluate_leaf(node, {f2f: FactValue(date(2026, 5, 27))}) is UNMET
    assert evaluate_leaf(node, {f2f: FactValue(date(2026, 11, 29))}) is UNMET  # after the order


def _coded(code: str, status: str, system: str = "http://hl7.org/fhir/sid/icd-10-cm") -> CodedItem:
    return CodedItem(system, code, "", status, Evidence(f"Condition/{code}-{status}", code))


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([_coded("E11.9", "active")], MET),
        ([_coded("E1165", "active")], MET),  # ICD-10-CM prefixes match with or without the dot
        ([_coded("44054006", "active", "http://snomed.info/sct")], MET),
        ([_coded("E11.9", "inactive")], UNMET),
        ([_coded("E11.9", "refuted"), _coded("E10.9", "active")], MET),
        ([_coded("E11.9", "unconfirmed")], UNKNOWN),
        ([_coded("I10", "active")], UNKNOWN),
        ([], UNKNOWN),
    ],
)
def test_has_code_reads_status(items: list[CodedItem], expected: Truth) -> None:
    node = {"fact": "patient.conditions", "op": "has_code", "valueset": "diabetes"}
    assert evaluate_leaf(node, {"patient.conditions": FactValue(tuple(items))}) is expected


def test_has_code_evidence_is_the_matching_records_only() -> None:
    policy = load_policy()
    items = (_coded("E11.9", "active"), _coded("I10", "active"))
    evaluator = _Evaluator(policy, {"patient.conditions": FactValue(items)}, AS_OF)
    result = evaluator.criterion("EIP-CSII-DIABETES")
    assert [e.reference for e in result.evidence] == ["Condition/E11.9-active"]


def _episode(kind: str | None, family: str | None) -> dict[str, FactValue]:
    return {"episode.pump_kind": FactValue(kind), "episode.drug_family": FactValue(family)}


def test_first_applicable_indication_rule_decides() -> None:
    decision = evaluate_policy(load_policy(), _episode("external", "vancomycin"), AS_OF)
    assert decision is not None
    assert decision.rule_id == "EIP-VANCO"
    assert decision.outcome is Outcome.NOT_COVERED


def test_unknown_pump_kind_asks_for_it() -> None:
    decision = evaluate_policy(load_policy(), _episode(None, "insulin"), AS_OF)
    assert decision is not None
    assert decision.rule_id == "SCOPE-PUMP-KIND"
    assert decision.outcome is Outcome.CONDITIONAL
    assert decision.indication.missing == Needs("all", ("SCOPE-PUMP-KIND-KNOWN",))


def test_needs_keep_the_shape_of_the_unknown_part() -> None:
    facts = {**_episode("external", "insulin"), "order.setting": FactValue("home")}
    decision = evaluate_policy(load_policy(), facts, AS_OF)
    assert decision is not None
    assert decision.outcome is Outcome.CONDITIONAL
    needs = decision.indication.missing
    assert needs is not None
    assert needs.mode == "all"
    assert "EIP-CSII-HOME" not in needs.criterion_ids()  # met: nothing to document
    assert Needs("any", ("EIP-CSII-C-PEPTIDE", "EIP-CSII-AUTOANTIBODY")) in needs.items


def _policy_with(rules: list[dict[str, Any]], criteria: list[dict[str, Any]], **extra: Any) -> Any:
    raw = {
        "id": "P",
        "version": "1",
        "title": "t",
        "url": "https://example.org/p",
        "effective": {"from": "2020-01-01"},
        "sources": {"P": {"label": "P", "url": "https://example.org/p"}},
        "links": [],
        "documentation": [],
        "alternatives": [],
        "questionnaire": {"id": "q", "url": "https://example.org/q", "version": "1", "title": "q"},
        "criteria": criteria,
        "rules": rules,
        **extra,
    }
    return build_policy(raw)


_CITE = [{"source": "P", "section": "s"}]
_OUTCOME_MESSAGES = {"covered": "c", "not-covered": "n", "conditional": "u"}


def _rule(rule_id: str, kind: str, criterion: str, **extra: Any) -> dict[str, Any]:
    messages = (
        {"met": "m", "unmet": "n", "unknown": "u"} if kind == "guidance" else _OUTCOME_MESSAGES
    )
    return {
        "id": rule_id,
        "kind": kind,
        "title": rule_id,
        "citations": _CITE,
        "applies_when": {"const": "met"},
        "decides": {"criterion": criterion},
        "criteria": [criterion],
        "messages": messages,
        **extra,
    }


def _criterion(criterion_id: str, truth: str) -> dict[str, Any]:
    return {
        "id": criterion_id,
        "text": criterion_id,
        "citations": _CITE,
        "facts": [],
        "logic": {"const": truth},
    }


def test_requirement_rules_make_the_outcome_worse_never_better() -> None:
    policy = _policy_with(
        [
            _rule("IND", "indication", "C-MET"),
            _rule("REQ", "requirement", "C-UNKNOWN"),
            _rule("GUIDE", "guidance", "C-UNMET"),
        ],
        [
            _criterion("C-MET", "met"),
            _criterion("C-UNKNOWN", "unknown"),
            _criterion("C-UNMET", "unmet"),
        ],
    )
    decision = evaluate_policy(policy, {}, AS_OF)
    assert decision is not None
    assert decision.indication.outcome is Outcome.COVERED
    assert decision.outcome is Outcome.CONDITIONAL  # the requirement is not shown
    assert [g.truth for g in decision.guidance] == [UNMET]  # guidance never changes it


def test_rules_out_of_effect_are_skipped() -> None:
    policy = _policy_with(
        [
            _rule("OLD", "indication", "C-UNMET", effective={"to": "2023-05-12"}),
            _rule("NEW", "indication", "C-MET"),
        ],
        [_criterion("C-MET", "met"), _criterion("C-UNMET", "unmet")],
    )
    assert evaluate_policy(policy, {}, date(2023, 5, 11)).rule_id == "OLD"  # type: ignore[union-attr]
    assert evaluate_policy(policy, {}, date(2023, 5, 12)).rule_id == "NEW"  # type: ignore[union-attr]


def test_no_decision_outside_the_policy_effective_period() -> None:
    policy = _policy_with([_rule("IND", "indication", "C-MET")], [_criterion("C-MET", "met")])
    assert evaluate_policy(policy, {}, date(2019, 12, 31)) is None


ANSWER_OR_RECORD = {
    "answer": {"fact": "doc.csii-mdi-6-months", "op": "is_true"},
    "record": {"fact": "med.insulin_mdi_days", "op": "gte", "value": 182},
}


@pytest.mark.parametrize(
    ("answer", "record", "expected"),
    [
        (None, None, UNKNOWN),
        (None, 30, UNKNOWN),  # the record against, unanswered: an answer may still meet it
        (None, 200, MET),
        (False, None, UNMET),  # an explicit No outweighs a record that shows nothing
        (False, 30, UNMET),
        (False, 200, MET),  # unless the record shows it met
        (True, None, MET),
        (True, 30, MET),
        ("missing", "missing", UNKNOWN),
        (False, "missing", UNMET),  # the record could not be had: the answer decides
    ],
)
def test_an_explicit_answer_decides_unless_the_record_shows_it_met(
    answer: Any, record: Any, expected: Truth
) -> None:
    facts = {}
    if answer != "missing":
        facts["doc.csii-mdi-6-months"] = FactValue(answer)
    if record != "missing":
        facts["med.insulin_mdi_days"] = FactValue(record)
    assert evaluate_leaf(ANSWER_OR_RECORD, facts) is expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (("active",), MET),
        (("inactive",), UNMET),
        (("unconfirmed",), UNKNOWN),  # shown but not confirmed: never read as absent
        (("unconfirmed", "inactive"), UNKNOWN),
        (("active", "unconfirmed"), MET),
        ((), UNMET),  # looked for, not found: the leaf's absent truth
    ],
)
def test_a_code_shown_only_unconfirmed_is_unknown(
    statuses: tuple[str, ...], expected: Truth
) -> None:
    node = {
        "fact": "patient.implanted_devices",
        "op": "has_code",
        "valueset": "implanted-stimulators",
        "absent": "unmet",
    }
    items = tuple(
        CodedItem(
            "http://hl7.org/fhir/sid/icd-10-cm", "Z95.0", "", status, Evidence(f"Condition/{i}", "")
        )
        for i, status in enumerate(statuses)
    )
    assert evaluate_leaf(node, {"patient.implanted_devices": FactValue(items)}) is expected


# -- preconditions ----------------------------------------------------------------------------

DIED = "patient.date_of_death"
DEATH_RECORD = Evidence("Patient/p", "deceased on 2026-11-28")


@pytest.mark.parametrize(
    ("died", "stops"),
    [
        (date(2026, 11, 28), True),  # on the order date
        (date(2026, 1, 5), True),
        (date.min, True),  # deceased, no date recorded
        (date(2026, 11, 29), False),  # after the order date
        (None, False),  # the record does not say the patient died
    ],
)
def test_the_deceased_precondition_holds_on_or_before_the_order_date(
    died: date | None, stops: bool
) -> None:
    policy = load_policy()
    evidence = (DEATH_RECORD,) if died else ()
    result = check_preconditions(policy, {DIED: FactValue(died, evidence)}, AS_OF)
    if not stops:
        assert result is None
        return
    assert result is not None
    assert result.precondition is policy.preconditions[0]
    assert (result.outcome, result.value, result.evidence) == ("deceased", died, evidence)


def test_a_precondition_whose_fact_could_not_be_had_lets_the_order_be_decided() -> None:
    assert check_preconditions(load_policy(), {}, AS_OF) is None


def test_preconditions_are_checked_whatever_the_policy_effective_period() -> None:
    """An order dated before the policy took effect is not decided, but the record
    showing the patient deceased is still said."""
    before = date(2019, 12, 31)
    facts = {DIED: FactValue(date(2019, 6, 1))}
    assert evaluate_policy(load_policy(), facts, before) is None
    assert check_preconditions(load_policy(), facts, before) is not None
