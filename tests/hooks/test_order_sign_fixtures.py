"""Rule fixtures: each is decided by the rule its name starts with, and every rule has a
fixture per outcome it can produce. (That every fixture gets the outcome in its name, and
its golden response, is tests/test_end_to_end.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from coverage_policy.loader import load_policy
from coverage_policy.model import Decision, Truth
from coverage_policy.report import guidance_message
from hooks.coverage_information import EXTENSION_URL
from hooks.decide import deliberate, find_scope
from hooks.request import ClinicalInput, HookRequest
from tests.conftest import FIXED_NOW, FIXTURES, ORDER_SIGN

POLICY = load_policy()
TODAY = FIXED_NOW.date()

OUTCOMES = ("covered", "not-covered", "conditional")
REQUESTS = sorted(
    path
    for path in (FIXTURES / "requests").glob("order-sign__*__*.json")
    if path.stem.rsplit("__", 1)[1] in OUTCOMES
)
# The rule (indication or requirement) each fixture family shows, by name prefix.
RULE_OF_PREFIX = {
    "eip-iron-": "EIP-IRON",
    "eip-chemo-": "EIP-CHEMO",
    "eip-morphine-": "EIP-MORPHINE",
    "eip-heparin-": "EIP-HEPARIN",
    "eip-other-chemo-": "EIP-OTHER-CHEMO",
    "eip-other-inotrope-": "EIP-OTHER-INOTROPE",
    "eip-other-prostacyclin-": "EIP-OTHER-PROSTACYCLIN",
    "eip-other-anti-infective-": "EIP-OTHER-ANTI-INFECTIVE",
    "eip-other-ziconotide": "EIP-OTHER-ZICONOTIDE",
    "eip-other-scig": "EIP-OTHER-SCIG",
    "eip-vanco-": "EIP-VANCO",
    "eip-csii-": "EIP-CSII",
    "iip-insulin-": "IIP-INSULIN",
    "iip-heparin-": "IIP-HEPARIN",
    "iip-liver-": "IIP-LIVER",
    "iip-spasticity-": "IIP-SPASTICITY",
    "iip-opioid-": "IIP-OPIOID",
    "iip-other-": "IIP-OTHER",
    "iip-contraindication-": "IIP-CONTRAINDICATIONS",
    "dme-f2f-": "DME-F2F",
    "pump-individual-review-": "PUMP-INDIVIDUAL-REVIEW",
    "scope-pump-kind-": "SCOPE-PUMP-KIND",
}


def post(client: FlaskClient, path: Path) -> dict[str, Any]:
    response = client.post(ORDER_SIGN, json=json.loads(path.read_text(encoding="utf-8")))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def test_fixtures_are_present() -> None:
    assert len(REQUESTS) >= len(RULE_OF_PREFIX) * 2


def rule_named_by(path: Path) -> str | None:
    order = path.stem.split("__")[1]
    return next((r for prefix, r in RULE_OF_PREFIX.items() if order.startswith(prefix)), None)


RULE_FIXTURES = [path for path in REQUESTS if rule_named_by(path)]


@pytest.mark.parametrize(
    "path", RULE_FIXTURES, ids=[p.stem.split("__", 1)[1] for p in RULE_FIXTURES]
)
def test_fixture_is_decided_by_the_rule_it_names(path: Path) -> None:
    rule_id = rule_named_by(path)
    (decision,) = decisions_of(json.loads(path.read_text(encoding="utf-8")))
    assert rule_id in [r.rule.id for r in decision.deciding_results]


def test_every_rule_has_a_fixture_per_outcome_it_can_produce() -> None:
    produced: dict[str, set[str]] = {}
    for path in REQUESTS:
        order, outcome = path.stem.split("__")[1:]
        for prefix, rule_id in RULE_OF_PREFIX.items():
            if order.startswith(prefix):
                produced.setdefault(rule_id, set()).add(outcome)
    never_covered = {"EIP-VANCO", "IIP-INSULIN", "IIP-HEPARIN"}
    for rule_id in RULE_OF_PREFIX.values():
        if rule_id in never_covered:
            assert produced[rule_id] == {"not-covered"}, rule_id
        elif rule_id == "SCOPE-PUMP-KIND":
            assert produced[rule_id] == {"conditional"}
        elif rule_id == "IIP-CONTRAINDICATIONS":  # covered: every covered implantable fixture
            assert produced[rule_id] == {"not-covered", "conditional"}
        else:
            assert produced[rule_id] == set(OUTCOMES), rule_id


def decisions_of(body: dict[str, Any]) -> list[Decision]:
    request = HookRequest(
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch=body.get("prefetch") or {},
        extension=body.get("extension") or {},
    )
    scope = find_scope(body["context"]["draftOrders"], "context.draftOrders", POLICY, TODAY)
    clinical = ClinicalInput(data=request.prefetch)
    return [d.decision for d in deliberate(request, clinical, scope, POLICY, TODAY).decisions]


def _guidance_lines(path: Path) -> str:
    """The guidance the decision reports (shown on the decision page and in the trace)."""
    (decision,) = decisions_of(json.loads(path.read_text(encoding="utf-8")))
    return " ".join(
        f"{g.rule.title}: {guidance_message(g.rule, g.truth, decision.indication.outcome)}"
        for g in decision.guidance
    )


def test_covid_flexibilities_shown_for_an_order_during_the_phe(client: FlaskClient) -> None:
    path = (
        FIXTURES / "requests/order-sign__eip-iron-deferoxamine-covid-phe-2023-05-01__covered.json"
    )
    assert "COVID-19 public health emergency flexibilities" in _guidance_lines(path)


def test_covid_flexibilities_not_shown_after_the_phe_ended(client: FlaskClient) -> None:
    path = (
        FIXTURES / "requests/order-sign__eip-iron-deferoxamine-after-phe-2023-05-20__covered.json"
    )
    assert "COVID-19 public health emergency" not in _guidance_lines(path)


def test_contraindication_card_is_a_warning_naming_the_evidence(client: FlaskClient) -> None:
    path = FIXTURES / "requests/order-sign__iip-contraindication-allergy-baclofen__not-covered.json"
    body = post(client, path)
    guideline = next(c for c in body["cards"] if c["source"]["topic"]["code"] == "guideline")
    assert guideline["indicator"] == "warning"
    assert "baclofen" in guideline["detail"].split("**Against coverage**")[1]


def test_contraindication_is_the_reason_recorded_on_the_order(client: FlaskClient) -> None:
    path = FIXTURES / "requests/order-sign__iip-contraindication-pacemaker__not-covered.json"
    action = post(client, path)["systemActions"][0]
    extension = next(e for e in action["resource"]["extension"] if e["url"] == EXTENSION_URL)
    reason = next(p for p in extension["extension"] if p["url"] == "reason")
    assert "contraindicated" in reason["valueCodeableConcept"]["text"]


def test_body_size_card_shows_weight_and_bmi(client: FlaskClient) -> None:
    path = FIXTURES / "requests/order-sign__iip-contraindication-body-size__not-covered.json"
    guideline = next(
        c for c in post(client, path)["cards"] if c["source"]["topic"]["code"] == "guideline"
    )
    assert "Body weight 36.0 kg" in guideline["detail"]
    assert "BMI 14.8 kg/m2" in guideline["detail"]


def test_institutional_heparin_bills_part_d_without_part_a(client: FlaskClient) -> None:
    path = FIXTURES / "requests/order-sign__eip-heparin-inpatient__covered.json"
    detail = _guidance_lines(path)
    assert "Part D: for a member in a hospital or SNF bed" in detail


def test_snf_bed_with_part_a_exhausted_bills_part_d(client: FlaskClient) -> None:
    """Institutional (so covered) from the SNF Location; Part A status from documentation."""
    path = FIXTURES / "requests/order-sign__eip-heparin-snf-part-a-exhausted__covered.json"
    detail = _guidance_lines(path)
    assert "Part D: for a member in a hospital or SNF bed" in detail
    assert "DME-F2F" not in detail


@pytest.mark.parametrize(
    ("name", "item_id", "criterion_id"),
    [
        (
            "eip-csii-insulin-lispro-mdi-answered-no__conditional",
            "csii-mdi-6-months",
            "EIP-CSII-MDI",
        ),
        (
            "eip-csii-insulin-lispro-smbg-answered-no__not-covered",
            "csii-smbg-4-per-day",
            "EIP-CSII-SMBG",
        ),
    ],
)
def test_an_item_answered_no_is_not_asked_for_again(
    client: FlaskClient, name: str, item_id: str, criterion_id: str
) -> None:
    """Answered No with nothing in the record either way: the criterion is not met, and
    neither a card nor the order's coverage information asks for the item again."""
    policy = load_policy()
    body = post(client, FIXTURES / f"requests/order-sign__{name}.json")
    asking = [c for c in body["cards"] if c["source"]["topic"]["code"] != "guideline"]
    instructions = [
        part
        for action in body["systemActions"]
        for extension in action["resource"]["extension"]
        if extension["url"] == EXTENSION_URL
        for part in extension["extension"]
        if part["url"] == "detail" and "instructions" in json.dumps(part)
    ]
    asked = json.dumps([asking, instructions])
    for words in (item_id, policy.documentation[item_id].text, policy.criteria[criterion_id].text):
        assert words not in asked
    request = json.loads((FIXTURES / f"requests/order-sign__{name}.json").read_text())
    (decision,) = decisions_of(request)
    truths = {r.criterion.id: r.truth for rule in decision.deciding_results for r in rule.results}
    assert truths[criterion_id] is Truth.UNMET
