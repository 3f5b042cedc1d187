"""Every line a documentation card can ask for can be acted on: the criterion has a
form item, or the card says how to settle it (on the order, or in the record)."""

from __future__ import annotations

import pytest

from coverage_policy.loader import load_policy, logic_nodes
from coverage_policy.model import RuleKind
from hooks.cards import card_text

POLICY = load_policy()


def _deciding_criteria() -> list[str]:
    found: list[str] = []
    for rule in POLICY.rules:
        if rule.kind is RuleKind.GUIDANCE:
            continue
        found += [
            n["criterion"]
            for n in logic_nodes(rule.decides)
            if "criterion" in n and n["criterion"] not in found
        ]
    return found


@pytest.mark.parametrize("criterion_id", _deciding_criteria())
def test_every_line_a_card_asks_for_can_be_answered(criterion_id: str) -> None:
    criterion = POLICY.criteria[criterion_id]
    if "const" in criterion.logic:
        pytest.skip("decided by the policy itself, never asked")
    hints = card_text()["detail"]["settle_hints"]
    assert criterion.documentation or any(f in hints for f in criterion.facts), (
        f"{criterion_id}: no form item and no way to settle it on the card"
    )


def test_the_home_setting_and_insulinopenia_have_form_items() -> None:
    assert POLICY.criteria["EIP-CSII-HOME"].documentation == ("pump-use-setting",)
    assert set(POLICY.criteria["EIP-CSII-C-PEPTIDE"].documentation) == {
        "c-peptide-result",
        "c-peptide-lower-limit",
        "c-peptide-date",
        "c-peptide-fasting-glucose",
        "creatinine-clearance",
    }
