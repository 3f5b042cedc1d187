"""The policy loader refuses unsound policies, naming every problem."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from coverage_policy.loader import DATA, DEFAULT_POLICY, PolicyLoadError, build_policy, load_policy


@pytest.fixture
def raw_policy() -> dict[str, Any]:
    """A fresh copy of the packaged policy data, to break in one place per test."""
    return copy.deepcopy(json.loads(DATA.joinpath(DEFAULT_POLICY).read_text()))


def _problems(raw: dict[str, Any]) -> str:
    with pytest.raises(PolicyLoadError) as excinfo:
        build_policy(raw)
    return str(excinfo.value)


def _criterion(raw: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    return next(c for c in raw["criteria"] if c["id"] == criterion_id)


def test_packaged_policy_loads() -> None:
    policy = load_policy()
    assert policy.id == "MCS051.01"
    assert {"EIP-CSII", "EIP-VANCO", "EIP-HEPARIN", "IIP-INSULIN"} <= {r.id for r in policy.rules}
    assert all(c.citations for c in policy.criteria.values())


def test_schema_violation_is_reported_with_its_path(raw_policy: dict[str, Any]) -> None:
    raw_policy["rules"][0]["kind"] = "sometimes"
    assert "$.rules[0].kind" in _problems(raw_policy)


@pytest.mark.parametrize(
    ("logic", "named"),
    [
        ({"all": [{"fact": "order.setting", "op": "eq"}]}, "logic.all[0]: 'value' is a required"),
        ({"answer": {"const": "met"}}, "logic: 'record' is a required property"),
        ({"not": {"const": "maybe"}}, "logic.not.const: 'maybe' is not one of"),
        ({"all": [{"fact": "order.setting", "op": "eq", "value": "home"}], "any": []}, "'any' was"),
        ({"every": []}, "logic: Additional properties are not allowed ('every' was unexpected)"),
        ({"fact": "order.setting", "op": "in"}, "logic: 'values' is a required property"),
        (["all"], "logic: ['all'] is not of type 'object'"),
    ],
)
def test_a_wrong_logic_node_is_named_by_what_its_kind_lacks(
    raw_policy: dict[str, Any], logic: Any, named: str
) -> None:
    _criterion(raw_policy, "EIP-CSII-HOME")["logic"] = logic
    problems = _problems(raw_policy)
    assert named in problems
    assert "is not valid under any of the given schemas" not in problems


def test_duplicate_ids(raw_policy: dict[str, Any]) -> None:
    raw_policy["criteria"].append(copy.deepcopy(raw_policy["criteria"][0]))
    assert "duplicate id" in _problems(raw_policy)


def test_unknown_fact(raw_policy: dict[str, Any]) -> None:
    criterion = _criterion(raw_policy, "EIP-CSII-HOME")
    criterion["logic"] = {"fact": "order.place", "op": "eq", "value": "home"}
    criterion["facts"] = ["order.place"]
    assert "unknown fact order.place" in _problems(raw_policy)


def test_declared_facts_must_equal_facts_read(raw_policy: dict[str, Any]) -> None:
    _criterion(raw_policy, "EIP-CSII-HOME")["facts"] = ["order.setting", "order.hcpcs"]
    assert "declares facts" in _problems(raw_policy)


def test_unknown_value_set(raw_policy: dict[str, Any]) -> None:
    _criterion(raw_policy, "EIP-CSII-DIABETES")["logic"]["valueset"] = "diabetes-typo"
    assert "unknown value set diabetes-typo" in _problems(raw_policy)


def test_operator_must_fit_the_fact_type(raw_policy: dict[str, Any]) -> None:
    _criterion(raw_policy, "EIP-CSII-HOME")["logic"] = {
        "fact": "order.setting",
        "op": "gt",
        "value": 1,
    }
    assert "operator gt does not apply" in _problems(raw_policy)


def test_enum_value_that_can_never_occur(raw_policy: dict[str, Any]) -> None:
    _criterion(raw_policy, "EIP-CSII-HOME")["logic"]["value"] = "hospital"
    assert "can never be 'hospital'" in _problems(raw_policy)


def test_rule_naming_an_unknown_criterion(raw_policy: dict[str, Any]) -> None:
    rule = next(r for r in raw_policy["rules"] if r["id"] == "EIP-VANCO")
    rule["decides"] = {"criterion": "EIP-VANCO-NOPE"}
    assert "unknown criterion EIP-VANCO-NOPE" in _problems(raw_policy)


def test_orphan_criterion(raw_policy: dict[str, Any]) -> None:
    raw_policy["criteria"].append({**copy.deepcopy(raw_policy["criteria"][1]), "id": "ORPHAN-1"})
    assert "criterion ORPHAN-1 is used by no rule" in _problems(raw_policy)


def test_messages_must_cover_every_outcome(raw_policy: dict[str, Any]) -> None:
    del raw_policy["rules"][1]["messages"]["conditional"]
    assert "messages must be exactly" in _problems(raw_policy)


def test_empty_effective_period(raw_policy: dict[str, Any]) -> None:
    raw_policy["rules"][1]["effective"] = {"from": "2024-01-01", "to": "2023-01-01"}
    assert "effective 'from' must be before 'to'" in _problems(raw_policy)


def test_unknown_citation_source_and_alternative(raw_policy: dict[str, Any]) -> None:
    raw_policy["rules"][1]["citations"][0]["source"] = "LCD-L99999"
    raw_policy["rules"][1]["alternatives"] = ["teleport"]
    problems = _problems(raw_policy)
    assert "cites unknown source LCD-L99999" in problems
    assert "unknown alternative teleport" in problems


def test_guidance_may_add_only_if_not_covered_messages(raw_policy: dict[str, Any]) -> None:
    billing = next(r for r in raw_policy["rules"] if r["id"] == "BILLING-PARTB-PARTD")
    assert "met-if-not-covered" in billing["messages"]
    billing["messages"]["met-if-covered"] = "not a message key"
    assert "optionally also" in _problems(raw_policy)


def test_an_answer_beside_the_record_in_any_is_refused(raw_policy: dict[str, Any]) -> None:
    """Written as ``any`` an unknown record would outweigh an explicit "no" answer."""
    _criterion(raw_policy, "EIP-CSII-MDI")["logic"] = {
        "any": [
            {"fact": "doc.csii-mdi-6-months", "op": "is_true"},
            {"fact": "med.insulin_mdi_days", "op": "gte", "value": 182},
        ]
    }
    assert "must be written as {answer, record}" in _problems(raw_policy)


@pytest.mark.parametrize(
    ("logic", "problem"),
    [
        (
            {
                "answer": {"fact": "med.insulin_mdi_days", "op": "gte", "value": 182},
                "record": {"fact": "doc.csii-mdi-6-months", "op": "is_true"},
            },
            "an answer must be a leaf on a doc.* fact",
        ),
        (
            {
                "answer": {"fact": "doc.csii-mdi-6-months", "op": "is_true"},
                "record": {
                    "any": [
                        {"fact": "med.insulin_mdi_days", "op": "gte", "value": 182},
                        {"fact": "doc.csii-diabetes-education", "op": "is_true"},
                    ]
                },
            },
            "answer reads doc.* facts and record reads the rest",
        ),
    ],
)
def test_answer_and_record_read_their_own_facts(
    raw_policy: dict[str, Any], logic: dict[str, Any], problem: str
) -> None:
    criterion = _criterion(raw_policy, "EIP-CSII-MDI")
    criterion["logic"] = logic
    criterion["facts"] = sorted(
        {"doc.csii-mdi-6-months", "med.insulin_mdi_days", "doc.csii-diabetes-education"}
        & set(json.dumps(logic).replace('"', " ").split())
    )
    assert problem in _problems(raw_policy)


def test_answer_and_record_only_in_criteria(raw_policy: dict[str, Any]) -> None:
    rule = next(r for r in raw_policy["rules"] if r["id"] == "EIP-CSII")
    rule["applies_when"] = {
        "answer": {"fact": "doc.pump-kind", "op": "exists"},
        "record": {"fact": "episode.pump_kind", "op": "exists"},
    }
    assert "answer/record belongs in a criterion's logic" in _problems(raw_policy)


# -- preconditions ---------------------------------------------------------------------------


def _precondition(raw: dict[str, Any]) -> dict[str, Any]:
    (precondition,) = raw["preconditions"]
    return precondition  # type: ignore[no-any-return]


def test_the_deceased_patient_rule_is_a_precondition_of_the_policy() -> None:
    (precondition,) = load_policy().preconditions
    assert precondition.id == "PATIENT-DECEASED"
    assert precondition.fact == "patient.date_of_death"
    assert precondition.when == {
        "fact": "patient.date_of_death",
        "op": "on_or_before",
        "absent": "unmet",
    }
    assert precondition.outcome == "deceased"
    assert [c.source for c in precondition.citations] == ["CFR-422.74"]
    assert load_policy().precondition_facts == {"patient.date_of_death"}


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (
            {"fact": "patient.age_years", "op": "gte", "value": 120},
            "is stated on patient.date_of_death but reads ['patient.age_years']",
        ),
        (
            {"fact": "patient.date_of_death", "op": "gte", "value": 3},
            "operator gte does not apply to date fact patient.date_of_death",
        ),
        (
            {
                "all": [
                    {"criterion": "EIP-CSII-HOME"},
                    {"fact": "patient.date_of_death", "op": "exists"},
                ]
            },
            "'when' reads its fact, not criteria or answers",
        ),
    ],
)
def test_a_precondition_reads_its_own_fact_only(
    raw_policy: dict[str, Any], when: dict[str, Any], problem: str
) -> None:
    _precondition(raw_policy)["when"] = when
    assert problem in _problems(raw_policy)


def test_a_precondition_is_not_stated_on_documentation(raw_policy: dict[str, Any]) -> None:
    precondition = _precondition(raw_policy)
    precondition["fact"] = "doc.csii-diabetes-education"
    precondition["when"] = {"fact": "doc.csii-diabetes-education", "op": "is_true"}
    assert "is stated on a record fact, not documentation" in _problems(raw_policy)


def test_a_precondition_cites_a_known_source_and_has_a_known_outcome(
    raw_policy: dict[str, Any],
) -> None:
    _precondition(raw_policy)["citations"] = [{"source": "NOWHERE", "section": "1"}]
    assert "precondition PATIENT-DECEASED: cites unknown source NOWHERE" in _problems(raw_policy)
    _precondition(raw_policy)["outcome"] = "covered"
    assert "$.preconditions[0].outcome" in _problems(raw_policy)


def test_a_precondition_id_is_unique_among_rules_and_criteria(raw_policy: dict[str, Any]) -> None:
    _precondition(raw_policy)["id"] = "EIP-CSII"
    assert "duplicate id EIP-CSII in rules" in _problems(raw_policy)


def test_a_policy_without_preconditions_loads(raw_policy: dict[str, Any]) -> None:
    del raw_policy["preconditions"]
    assert build_policy(raw_policy).preconditions == ()


def test_each_rule_is_found_by_its_id() -> None:
    """``rules_by_id`` holds every rule under its id, and a policy built with other rules
    (``dataclasses.replace``) maps those, not the loaded ones."""
    policy = load_policy()
    assert list(policy.rules_by_id) == [rule.id for rule in policy.rules]
    assert all(policy.rules_by_id[rule.id] is rule for rule in policy.rules)
    narrowed = dataclasses.replace(policy, rules=policy.rules[:1])
    assert list(narrowed.rules_by_id) == [policy.rules[0].id]
