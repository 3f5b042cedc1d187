"""An answer that stands in for what the order does not say (where the pump is used) is
recorded as an answer, not as the order's own fact: a form that corrects it later decides
on the correction."""

from __future__ import annotations

from datetime import date

from coverage_policy.loader import load_policy
from coverage_policy.model import FactValue, Outcome
from dtr.adaptive import knowledge_of, step
from fhir_mappings.episodes import find_pump_episodes, parse_draft_orders
from fhir_mappings.facts import precondition_facts
from fhir_mappings.record import build_record
from hooks.decide import EpisodeDecision, decide_episode
from tests.builders import (
    INTRAVENOUS,
    collection,
    coverage,
    device_request,
    medication_request,
    patient,
    pump_dosage,
    searchset,
)

POLICY = load_policy()
ORDER_DAY = date(2026, 11, 1)
PULMONARY_EMBOLISM = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I26.99"}]},
}


def _answered_home() -> EpisodeDecision:
    """E0779 + heparin with nothing saying where the pump is used but an answer "home"."""
    orders = [
        device_request("dr1", "p1", "E0779", authored_on=ORDER_DAY.isoformat()),
        medication_request(
            "mr1",
            "p1",
            "5224",
            "heparin",
            authored_on=ORDER_DAY.isoformat(),
            dosageInstruction=pump_dosage("Continuous infusion by pump", INTRAVENOUS),
        ),
    ]
    answer = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr1",
        "status": "completed",
        "questionnaire": POLICY.questionnaire_url,
        "authored": "2026-10-30",
        "subject": {"reference": "Patient/p1"},
        "item": [{"linkId": "pump-use-setting", "answer": [{"valueCoding": {"code": "home"}}]}],
    }
    record = build_record(
        {
            "patient": patient("p1"),
            "coverage": searchset(coverage("p1", "cov1")),
            "conditions": searchset(PULMONARY_EMBOLISM),
            "questionnaireResponses": searchset(answer),
            "medicationRequests": searchset(),
            "observations": searchset(),
            "encounters": searchset(),
        }
    )
    bundle = collection(orders)
    parsed, _, _ = parse_draft_orders(bundle, "context.draftOrders")
    [episode] = find_pump_episodes(parsed, record, build_record({"draftOrders": bundle}))
    decided = decide_episode(
        episode,
        record,
        POLICY,
        date(2026, 11, 2),
        before_deciding=precondition_facts(POLICY, record),
    )
    assert isinstance(decided, EpisodeDecision)
    return decided


def test_an_answered_setting_decides_but_is_not_recorded_as_the_orders() -> None:
    decided = _answered_home()
    assert decided.outcome is Outcome.NOT_COVERED  # heparin at home: not covered
    assert "order.setting" not in decided.order_facts
    assert decided.order_facts["order.hcpcs"] == "E0779"


def test_a_form_correcting_the_answer_decides_on_the_correction() -> None:
    decided = _answered_home()
    known = knowledge_of(
        decided.decision,
        orders=("DeviceRequest/dr1", "MedicationRequest/mr1"),
        order_facts=decided.order_facts,
        assertion_id=None,
        from_crd=True,
    )
    corrected = step(POLICY, known, {"doc.pump-use-setting": FactValue("institutional")})
    assert corrected is not None
    assert corrected.decision.outcome is Outcome.COVERED
