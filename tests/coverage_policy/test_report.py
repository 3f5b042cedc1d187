"""The policy report behind ``infusion-pump-cds policy show``."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from coverage_policy.loader import load_policy
from coverage_policy.model import Period, Policy
from coverage_policy.report import (
    Effective,
    PolicyReport,
    describe_logic,
    policy_report,
    render_json,
    render_markdown,
    render_report,
    render_text,
)


@pytest.fixture
def policy() -> Policy:
    """The packaged policy, whatever rules and criteria it holds today."""
    return load_policy()


@pytest.fixture
def report(policy: Policy) -> PolicyReport:
    """The report of the packaged policy."""
    return policy_report(policy)


def _ids(policy: Policy) -> list[str]:
    return [rule.id for rule in policy.rules] + list(policy.criteria)


def test_report_has_every_rule_and_its_criteria_in_order(
    policy: Policy, report: PolicyReport
) -> None:
    assert [r.id for r in report.rules] == [r.id for r in policy.rules]
    for entry, rule in zip(report.rules, policy.rules, strict=True):
        assert entry.kind == rule.kind.value
        assert [c.id for c in entry.criteria] == list(rule.criteria)
    assert (report.id, report.version) == (policy.id, policy.version)
    assert report.effective == Effective.of(policy.effective)


def test_criteria_carry_citations_evidence_and_documentation(
    policy: Policy, report: PolicyReport
) -> None:
    """Facts with their catalog description, value sets with their title, items with text."""
    for rule in report.rules:
        for entry in rule.criteria:
            criterion = policy.criteria[entry.id]
            assert entry.text == criterion.text
            assert entry.citations == tuple(c.render(policy.sources) for c in criterion.citations)
            read = [f for f in criterion.facts if not f.startswith("doc.")]
            assert [f.id for f in entry.facts] == read
            for fact in entry.facts:
                assert fact.description == policy.facts[fact.id].get("description", "")
            for valueset in entry.valuesets:
                assert valueset.description == policy.valuesets[valueset.id]["title"]
            assert [d.id for d in entry.documentation] == list(criterion.documentation)
    valuesets = {v.id for r in report.rules for c in r.criteria for v in c.valuesets}
    assert "diabetes" in valuesets


def test_deciding_means_named_in_the_rule_decision(report: PolicyReport) -> None:
    """A criterion is deciding exactly when the rule's ``decides`` names it; others are
    advisory (shown on the card, not part of the outcome)."""
    for rule in report.rules:
        for entry in rule.criteria:
            named = re.search(rf"(?<![A-Z0-9-]){re.escape(entry.id)}(?![A-Z0-9-])", rule.decides)
            assert entry.deciding == bool(named), (rule.id, entry.id)


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ({"const": "unmet"}, "never met"),
        ({"criterion": "A-1"}, "A-1"),
        (
            {"all": [{"criterion": "A"}, {"any": [{"criterion": "B"}, {"criterion": "C"}]}]},
            "A and (B or C)",
        ),
        ({"any": [{"criterion": "A"}]}, "A"),
        (
            {"not": {"fact": "episode.pump_kind", "op": "exists", "absent": "unmet"}},
            "not episode.pump_kind is known [when not found: unmet]",
        ),
        ({"fact": "lab.hba1c_percent", "op": "gt", "value": 7.0}, "lab.hba1c_percent > 7.0 %"),
        (
            {"fact": "order.setting", "op": "in", "values": ["home", "institutional"]},
            "order.setting in {home, institutional}",
        ),
        (
            {"fact": "patient.conditions", "op": "has_code", "valueset": "diabetes"},
            "patient.conditions has a code in value set diabetes",
        ),
        (
            {"fact": "encounter.last_visit_date", "op": "within_days", "value": 92},
            "encounter.last_visit_date within 92 days",
        ),
        ({"fact": "doc.x", "op": "is_true"}, "doc.x is true"),
        (
            {"fact": "patient.date_of_death", "op": "on_or_before", "absent": "unmet"},
            "patient.date_of_death on or before the order date [when not found: unmet]",
        ),
    ],
)
def test_describe_logic(policy: Policy, node: dict[str, object], words: str) -> None:
    assert describe_logic(node, policy) == words


@pytest.mark.parametrize(
    ("period", "words"),
    [
        (Period(), "always"),
        (Period(date(2021, 1, 19)), "from 2021-01-19"),
        (Period(None, date(2023, 5, 11)), "until 2023-05-11 (exclusive)"),
        (Period(date(2020, 3, 1), date(2023, 5, 11)), "2020-03-01 until 2023-05-11 (exclusive)"),
    ],
)
def test_effective_describe(period: Period, words: str) -> None:
    assert Effective.of(period).describe() == words


@pytest.mark.parametrize("width", [100, 80, 72])
def test_text_fits_the_width_and_keeps_every_id_whole(
    policy: Policy, report: PolicyReport, width: int
) -> None:
    text = render_text(report, width)
    assert max(len(line) for line in text.splitlines()) <= width
    words = set(re.findall(r"[A-Z0-9]+(?:-[A-Z0-9]+)*", text))
    assert set(_ids(policy)) <= words


def test_text_shows_rule_kind_and_policy_dates(report: PolicyReport) -> None:
    text = render_text(report)
    for rule in report.rules:
        assert f"RULE {rule.id} ({rule.kind}): " in text
    assert f"version {report.version}" in text
    assert f"Effective {report.effective.describe()}" in text


def test_markdown_is_one_table_row_per_rule_and_criterion(report: PolicyReport) -> None:
    markdown = render_markdown(report)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    header, *body = rows
    assert header == (
        "| rule | kind | criterion | citation | evidence accepted | documentation item |"
    )
    assert len(body) == sum(max(1, len(r.criteria)) for r in report.rules)
    for row in body:
        cells = re.split(r"(?<!\\)\|", row)[1:-1]
        assert len(cells) == 6, row


def test_json_round_trips_the_report(policy: Policy, report: PolicyReport) -> None:
    data = json.loads(render_json(report))
    assert data["id"] == policy.id
    assert data["effective"] == {"from": "2021-01-19", "to": None}
    assert [r["id"] for r in data["rules"]] == [r.id for r in policy.rules]
    criteria = {c["id"] for r in data["rules"] for c in r["criteria"]}
    assert criteria == set(policy.criteria)


def test_unknown_format_is_refused(report: PolicyReport) -> None:
    with pytest.raises(ValueError, match="yaml"):
        render_report(report, "yaml")


def test_the_report_shows_the_preconditions_before_the_rules(
    policy: Policy, report: PolicyReport
) -> None:
    (entry,) = report.preconditions
    (precondition,) = policy.preconditions
    assert (entry.id, entry.text, entry.outcome) == (
        precondition.id,
        precondition.text,
        "deceased",
    )
    assert entry.citations == tuple(c.render(policy.sources) for c in precondition.citations)
    assert entry.fact.id == "patient.date_of_death"
    assert entry.fact.description == policy.facts["patient.date_of_death"]["description"]
    assert entry.holds_when == (
        "patient.date_of_death on or before the order date [when not found: unmet]"
    )
    text = render_text(report)
    assert f"1 precondition, {len(report.rules)} rules" in text
    assert text.index("PRECONDITION PATIENT-DECEASED: ") < text.index("RULE ")
    assert "Cited: 42 CFR 422.74 Disenrollment by the MA organization" in text
    assert "Then: deceased (no coverage decision" in text
    markdown = render_markdown(report)
    assert markdown.index("- **PATIENT-DECEASED**: ") < markdown.index("| rule | kind |")
    data = json.loads(render_json(report))
    assert [p["id"] for p in data["preconditions"]] == ["PATIENT-DECEASED"]
    assert data["preconditions"][0]["fact"]["id"] == "patient.date_of_death"
