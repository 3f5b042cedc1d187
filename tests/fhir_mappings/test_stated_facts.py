"""Answers that stand in for record facts the record does not show (the items' ``states``)."""

from __future__ import annotations

from datetime import date

from coverage_policy.engine import evaluate_policy
from coverage_policy.loader import load_policy
from coverage_policy.model import FactValue, Truth
from fhir_mappings.documentation import stated_facts

AS_OF = date(2026, 11, 20)


def _answers(**values: object) -> dict[str, FactValue]:
    return {f"doc.{key.replace('_', '-')}": FactValue(value) for key, value in values.items()}


def test_a_c_peptide_result_is_a_percent_of_its_labs_lower_limit() -> None:
    stated = stated_facts(
        _answers(
            c_peptide_result=0.4,
            c_peptide_lower_limit=0.8,
            c_peptide_date=date(2026, 10, 1),
            c_peptide_fasting_glucose=110,
        ),
        AS_OF,
    )
    assert stated["lab.c_peptide_percent_of_lln"].value == 50.0
    assert stated["lab.c_peptide_fasting_glucose_mg_dl"].value == 110


def test_a_c_peptide_drawn_after_the_order_or_without_a_date_does_not_count() -> None:
    later = _answers(
        c_peptide_result=0.4, c_peptide_lower_limit=0.8, c_peptide_date=date(2026, 12, 1)
    )
    assert "lab.c_peptide_percent_of_lln" not in stated_facts(later, AS_OF)
    undated = _answers(c_peptide_result=0.4, c_peptide_lower_limit=0.8)
    assert "lab.c_peptide_percent_of_lln" not in stated_facts(undated, AS_OF)
    no_limit = _answers(c_peptide_result=0.4, c_peptide_lower_limit=0, c_peptide_date=AS_OF)
    assert "lab.c_peptide_percent_of_lln" not in stated_facts(no_limit, AS_OF)


def test_the_setting_and_the_pump_kind_are_stated_by_their_items() -> None:
    stated = stated_facts(_answers(pump_use_setting="home", pump_kind="external"), AS_OF)
    assert stated["order.setting"].value == "home"
    assert stated["episode.pump_kind"].value == "external"
    assert stated_facts(_answers(pump_use_setting=None), AS_OF) == {}


def test_the_insulinopenia_criterion_decides_on_stated_results_as_on_a_lab() -> None:
    """The same thresholds as a C-peptide Observation: 110 % of the lower limit, 200 %
    with a creatinine clearance of 50 mL/min or less, and a glucose of 225 mg/dL or less."""
    policy = load_policy()
    criterion = "EIP-CSII-C-PEPTIDE"

    def truth(result: float, clearance: float | None, glucose: float) -> Truth:
        answers = _answers(
            c_peptide_result=result,
            c_peptide_lower_limit=1.0,
            c_peptide_date=AS_OF,
            c_peptide_fasting_glucose=glucose,
            creatinine_clearance=clearance,
        )
        facts = {
            "episode.pump_kind": FactValue("external"),
            "episode.drug_family": FactValue("insulin"),
            **answers,
            **stated_facts(answers, AS_OF),
        }
        decision = evaluate_policy(policy, facts, AS_OF)
        assert decision is not None
        return next(r.truth for r in decision.indication.results if r.criterion.id == criterion)

    assert truth(1.1, None, 200) is Truth.MET
    assert truth(1.2, None, 200) is Truth.UNKNOWN  # the clearance could still allow 200 %
    assert truth(1.2, 90, 200) is Truth.UNMET
    assert truth(1.9, 40, 200) is Truth.MET
    assert truth(1.0, None, 230) is Truth.UNMET


def test_answers_count_when_given_after_the_order_was_drafted_and_by_the_call() -> None:
    """Documentation is often completed between drafting an order and signing it; an
    answer dated after the day of the call (a clock gone wrong) does not count."""
    from fhir_mappings.documentation import documentation_facts
    from fhir_mappings.record import build_record

    policy = load_policy()

    def answered_on(authored: str, today: date | None) -> object:
        response = {
            "resourceType": "QuestionnaireResponse",
            "id": "qr-1",
            "questionnaire": policy.questionnaire_url,
            "status": "completed",
            "authored": authored,
            "item": [{"linkId": "csii-diabetes-education", "answer": [{"valueBoolean": True}]}],
        }
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": response}]}
        record = build_record({"questionnaireResponses": bundle})
        facts = documentation_facts(
            record, policy.documentation, policy.questionnaire_url, AS_OF, answered_by=today
        )
        return facts["doc.csii-diabetes-education"].value

    assert answered_on("2026-11-25", date(2026, 11, 28)) is True
    assert answered_on("2026-11-25", None) is None  # without a call day: by the order date
    assert answered_on("2026-11-29", date(2026, 11, 28)) is None
    assert answered_on("2026-11-19", None) is True
