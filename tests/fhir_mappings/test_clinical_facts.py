"""Conditions, care setting, visits, insulin history and documentation answers."""

from __future__ import annotations

from datetime import date
from typing import Any

from coverage_policy.loader import load_policy
from fhir_mappings.conditions import condition_status, facts_from_condition
from fhir_mappings.documentation import documentation_facts
from fhir_mappings.encounters import last_visit_date, order_setting
from fhir_mappings.episodes import DraftOrder
from fhir_mappings.medication_history import doses_per_day, insulin_mdi_days
from fhir_mappings.r4 import parse_resource
from tests.builders import record_of

AS_OF = date(2026, 11, 28)


def condition(
    clinical: str | None, verification: str | None = "confirmed", **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    }
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return {**resource, **extra}


def test_condition_status_counts_only_active_and_confirmed() -> None:
    def status(resource: dict[str, Any]) -> str:
        return condition_status(parse_resource(resource, "x"))

    assert status(condition("active")) == "active"
    assert status(condition("recurrence")) == "active"
    assert status(condition("resolved")) == "inactive"
    assert status(condition("active", abatementDateTime="2020-01-01")) == "inactive"
    assert status(condition("active", "refuted")) == "refuted"
    assert status(condition("active", "provisional")) == "unconfirmed"


def test_condition_codes_carry_their_evidence() -> None:
    (entry,) = record_of(condition("active", onsetDateTime="2010-01-02")).of_type("Condition")
    (item,) = facts_from_condition(entry)
    assert (item.system, item.code, item.status) == ("http://snomed.info/sct", "44054006", "active")
    assert item.evidence.reference == "Condition/c1"
    assert "since 2010-01-02" in item.evidence.summary


def _draft(category: str | None) -> DraftOrder:
    raw = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "heparin"},
        "subject": {"reference": "Patient/p"},
    }
    if category:
        raw["category"] = [{"coding": [{"code": category}]}]
    return DraftOrder("MedicationRequest/m1", raw, parse_resource(raw, "x"))


def encounter(
    eid: str, cls: str, status: str = "finished", end: str = "2026-10-01", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"code": cls},
        "period": {"start": end, "end": end},
        **extra,
    }


def test_setting_from_category_then_encounter_then_unknown() -> None:
    record = record_of(encounter("inpt", "IMP"), encounter("amb", "AMB"))
    assert order_setting(_draft("inpatient"), "Encounter/amb", record).value == "institutional"
    assert order_setting(_draft("community"), "Encounter/inpt", record).value == "home"
    assert order_setting(_draft(None), "Encounter/inpt", record).value == "institutional"
    assert order_setting(None, "Encounter/amb", record).value == "home"
    assert order_setting(None, None, record).value is None


def test_skilled_nursing_facility_location_is_institutional() -> None:
    snf = {
        "resourceType": "Location",
        "id": "snf-1",
        "type": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SNF"}
                ]
            }
        ],
    }
    stay = encounter("stay", "AMB", location=[{"location": {"reference": "Location/snf-1"}}])
    fact = order_setting(None, "Encounter/stay", record_of(snf, stay))
    assert fact.value == "institutional"


def test_last_visit_is_the_latest_finished_ambulatory_encounter() -> None:
    record = record_of(
        encounter("a", "AMB", end="2026-06-01"),
        encounter("b", "VR", end="2026-09-01"),
        encounter("c", "IMP", end="2026-11-01"),
        encounter("d", "AMB", status="planned", end="2026-11-20"),
    )
    fact = last_visit_date(record, AS_OF)
    assert fact.value == date(2026, 9, 1)
    assert fact.evidence[0].reference == "Encounter/b"


def insulin(
    mid: str, authored: str, frequency: int, period_unit: str = "d", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": "completed",
        "intent": "order",
        "medicationCodeableConcept": {"text": "insulin aspart 100 UNT/ML"},
        "subject": {"reference": "Patient/p"},
        "authoredOn": authored,
        "dosageInstruction": [
            {"timing": {"repeat": {"frequency": frequency, "period": 1, "periodUnit": period_unit}}}
        ],
        **extra,
    }


def test_doses_per_day_from_timing() -> None:
    assert doses_per_day(parse_resource(insulin("m", "2026-01-01", 3), "x")) == 3
    assert doses_per_day(parse_resource(insulin("m", "2026-01-01", 1, "h"), "x")) == 24


def test_insulin_mdi_days_from_history() -> None:
    record = record_of(insulin("basal", "2024-01-01", 1), insulin("mdi", "2026-03-01", 3))
    fact = insulin_mdi_days(record, AS_OF)
    assert fact.value == (AS_OF - date(2026, 3, 1)).days
    assert fact.evidence[0].reference == "MedicationRequest/mdi"
    assert insulin_mdi_days(record_of(insulin("basal", "2024-01-01", 1)), AS_OF).value == 0
    assert insulin_mdi_days(record_of(), AS_OF).value is None


def test_insulin_mdi_days_count_only_a_span_reaching_the_order() -> None:
    """Old, stopped, cancelled, draft, intravenous or pump insulin orders are not MDI now."""
    validity = {"validityPeriod": {"start": "2019-01-01", "end": "2019-02-01"}}
    old_stopped = insulin("old", "2019-01-01", 3, status="stopped", dispenseRequest=validity)
    cancelled = insulin("cancelled", "2019-01-01", 3, status="cancelled")
    draft = insulin("draft", "2019-01-01", 3, status="draft")
    stopped_no_end = insulin("stopped", "2020-01-01", 3, status="stopped")
    iv = insulin("iv", "2020-01-01", 4, status="active")
    iv["dosageInstruction"][0]["route"] = {
        "coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]
    }
    pump = insulin("pump", "2020-01-01", 4, status="active")
    pump["dosageInstruction"][0]["text"] = "by insulin pump"
    basal = insulin("basal", "2018-01-01", 1, status="active")
    history = (old_stopped, cancelled, draft, stopped_no_end, iv, pump, basal)
    assert insulin_mdi_days(record_of(*history), AS_OF).value == 0
    bounded = insulin("bounded", "2026-01-01", 3, status="active")
    bounded["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"] = {"end": "2026-05-01"}
    assert insulin_mdi_days(record_of(bounded), AS_OF).value == 0
    # Two orders back to back up to the order date form one span from the first.
    first = insulin(
        "first",
        "2025-01-01",
        3,
        status="completed",
        dispenseRequest={"validityPeriod": {"start": "2025-01-01", "end": "2025-12-31"}},
    )
    second = insulin("second", "2026-01-01", 4, status="active")
    fact = insulin_mdi_days(record_of(first, second, *history), AS_OF)
    assert fact.value == (AS_OF - date(2025, 1, 1)).days
    assert [e.reference for e in fact.evidence] == [
        "MedicationRequest/first",
        "MedicationRequest/second",
    ]


def response(
    rid: str,
    authored: str,
    answers: dict[str, Any],
    questionnaire: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    policy = load_policy()
    return {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "status": status,
        "questionnaire": questionnaire or policy.questionnaire_url,
        "authored": authored,
        "item": [{"linkId": k, "answer": [v]} for k, v in answers.items()],
    }


def test_documentation_answers_most_recent_wins_and_others_are_ignored() -> None:
    policy = load_policy()
    record = record_of(
        response("old", "2026-01-01", {"csii-diabetes-education": {"valueBoolean": False}}),
        response(
            "new",
            "2026-06-01",
            {
                "csii-diabetes-education": {"valueBoolean": True},
                "csii-glycemic-problem": {"valueCoding": {"code": "dawn"}},
            },
        ),
        response(
            "draft",
            "2026-07-01",
            {"csii-diabetes-education": {"valueBoolean": False}},
            status="in-progress",
        ),
        response(
            "other-form",
            "2026-08-01",
            {"csii-diabetes-education": {"valueBoolean": False}},
            questionnaire="http://example.org/Questionnaire/other",
        ),
        response("future", "2027-01-01", {"csii-diabetes-education": {"valueBoolean": False}}),
    )
    facts = documentation_facts(record, policy.documentation, policy.questionnaire_url, AS_OF)
    assert facts["doc.csii-diabetes-education"].value is True
    assert facts["doc.csii-diabetes-education"].evidence[0].reference == "QuestionnaireResponse/new"
    assert facts["doc.csii-glycemic-problem"].value == "dawn"
    assert facts["doc.csii-pump-before-medicare"].value is None
