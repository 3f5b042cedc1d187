"""A decimal answer means the same to a DTR form and to order-sign reading it from the
record: a number, not negative, in the item's unit (``DocumentationItem.decimal_answer``)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from coverage_policy.loader import load_policy
from dtr.adaptive import FormInputError, read_answers
from fhir_mappings.documentation import documentation_facts
from fhir_mappings.record import build_record
from tests.builders import searchset

POLICY = load_policy()
ITEM = "c-peptide-result"  # ng/mL
DAY = date(2026, 11, 20)


def _response(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "status": "completed",
        "questionnaire": POLICY.questionnaire_url,
        "authored": DAY.isoformat(),
        "item": [{"linkId": ITEM, "answer": [answer]}],
    }


def _on_the_form(answer: dict[str, Any]) -> Any:
    try:
        return read_answers(POLICY, _response(answer))[f"doc.{ITEM}"].value
    except FormInputError:
        return None


def _in_the_record(answer: dict[str, Any]) -> Any:
    record = build_record({"questionnaireResponses": searchset(_response(answer))})
    facts = documentation_facts(record, POLICY.documentation, POLICY.questionnaire_url, DAY)
    return facts[f"doc.{ITEM}"].value


@pytest.mark.parametrize(
    ("answer", "amount"),
    [
        ({"valueDecimal": 0.4}, 0.4),
        ({"valueInteger": 1}, 1),
        ({"valueQuantity": {"value": 0.4, "unit": "ng/mL"}}, 0.4),
        (
            {
                "valueQuantity": {
                    "value": 0.4,
                    "code": "ng/mL",
                    "system": "http://unitsofmeasure.org",
                }
            },
            0.4,
        ),
        ({"valueQuantity": {"value": 0.4}}, 0.4),
        ({"valueDecimal": -0.5}, None),
        ({"valueQuantity": {"value": 0.13, "code": "nmol/L"}}, None),
    ],
)
def test_both_readers_take_a_decimal_answer_alike(answer: dict[str, Any], amount: Any) -> None:
    assert _on_the_form(answer) == amount
    assert _in_the_record(answer) == amount
