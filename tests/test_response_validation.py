"""The strict response validator: what it accepts, each rule it enforces, and the CRD examples."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import load_json, sequential_uuids
from tests.response_validation import (
    COVERAGE_INFORMATION_URL,
    ResponseInvalid,
    response_schema,
    validate_cds_response,
)

COVERAGE = "Coverage/cov-medicare-1"
OTHER_COVERAGE = "Coverage/cov-medigap-2"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
CARD_TYPE = "http://terminology.hl7.org/CodeSystem/cdshooks-card-type"
DETAIL_2_2 = "http://terminology.hl7.org/CodeSystem/crd-coverage-detail"
POLICY_URL = "https://payer.example.org/policies/MCS051.01"
QUESTIONNAIRE = "https://payer.example.org/fhir/Questionnaire/infusion-pump|1.0"
TOPIC_SYSTEMS = {"2.0": TEMP, "2.1": TEMP, "2.2": CARD_TYPE}


# --- building blocks -------------------------------------------------------------------------


def sub(url: str, **value: Any) -> dict[str, Any]:
    """One sub-extension, e.g. ``sub("covered", valueCode="covered")``."""
    return {"url": url, **value}


def detail(code: str, category: str | None = None, **value: Any) -> dict[str, Any]:
    """A coverage-information ``detail``; a category only where the CRD version has one."""
    parts = [sub("category", valueCode=category)] if category else []
    system = DETAIL_2_2 if category else TEMP
    parts += [
        sub("code", valueCodeableConcept={"coding": [{"system": system, "code": code}]}),
        sub("value", **value),
    ]
    return {"url": "detail", "extension": parts}


def coverage_information(*subs: dict[str, Any]) -> dict[str, Any]:
    return {"url": COVERAGE_INFORMATION_URL, "extension": list(subs)}


def conditional_2_0() -> dict[str, Any]:
    """Shaped like the CRD test kit's conditional example, with what q2, q8 and q3 require."""
    return coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode="conditional"),
        sub("pa-needed", valueCode="no-auth"),
        sub("doc-needed", valueCode="clinical"),
        sub("doc-purpose", valueCode="withorder"),
        sub("info-needed", valueCode="performer"),
        sub("reason", valueCodeableConcept={"text": "Coverage depends on the supplier chosen"}),
        detail("instructions", valueString="Document the insulin pump criteria in the order"),
        sub("questionnaire", valueCanonical=QUESTIONNAIRE),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0001"),
    )


def conditional_2_2() -> dict[str, Any]:
    """A 2.2 assertion: repeating doc-needed, categorised details, expiry date."""
    return coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode="conditional"),
        sub("pa-needed", valueCode="no-auth"),
        sub("doc-needed", valueCode="clinical"),
        sub("doc-needed", valueCode="admin"),
        sub("doc-purpose", valueCode="withclaim"),
        sub("info-needed", valueCode="OTH"),
        sub("reason", valueCodeableConcept={"text": "C-peptide result not found in the record"}),
        detail("policy-link", "cat-other", valueUrl=POLICY_URL),
        detail("instructions", "cat-decisional", valueString="Add the C-peptide result"),
        sub("questionnaire", valueCanonical=QUESTIONNAIRE),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0002"),
        sub("expiry-date", valueDate="2027-05-28"),
    )


def device_request(order_id: str = "devreq-1", *extensions: dict[str, Any]) -> dict[str, Any]:
    """A draft external infusion pump order (E0784), optionally carrying extensions."""
    resource: dict[str, Any] = {
        "resourceType": "DeviceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": {"coding": [{"system": HCPCS, "code": "E0784"}]},
        "subject": {"reference": "Patient/pat-1"},
        "authoredOn": "2026-11-28",
        "requester": {"reference": "PractitionerRole/prr-1"},
        "insurance": [{"reference": COVERAGE}],
    }
    if extensions:
        resource["extension"] = list(extensions)
    return resource


def coverage_action(extension: dict[str, Any], order_id: str = "devreq-1") -> dict[str, Any]:
    return {
        "type": "update",
        "description": "Record the coverage requirements on the draft infusion pump order",
        "resource": device_request(order_id, extension),
    }


def source(crd_version: str, card_type: str) -> dict[str, Any]:
    return {
        "label": "Example Medicare Advantage Plan",
        "url": POLICY_URL,
        "topic": {"system": TOPIC_SYSTEMS[crd_version], "code": card_type},
    }


def instructions_card(crd_version: str, new_uuid: Any) -> dict[str, Any]:
    return {
        "uuid": new_uuid(),
        "summary": "Infusion pump: document the C-peptide result before signing",
        "detail": "The record has no C-peptide result within the last 12 months.",
        "indicator": "info",
        "source": source(crd_version, "claim"),
        "extension": {"davinci-crd.associated-resource": [{"reference": "DeviceRequest/devreq-1"}]},
    }


def external_reference_card(crd_version: str, new_uuid: Any) -> dict[str, Any]:
    return {
        "uuid": new_uuid(),
        "summary": "Infusion pump covered under MCS051.01",
        "indicator": "info",
        "source": source(crd_version, "guideline"),
        "links": [
            {"label": "MCS051.01 Infusion Pump Therapy", "url": POLICY_URL, "type": "absolute"}
        ],
        "overrideReasons": [
            {
                "system": "https://payer.example.org/override",
                "code": "disagree",
                "display": "Clinician disagrees",
            }
        ],
    }


def smart_app_card(crd_version: str, new_uuid: Any) -> dict[str, Any]:
    return {
        "uuid": new_uuid(),
        "summary": "Open the infusion pump documentation app",
        "indicator": "info",
        "source": source(crd_version, "coverage-info"),
        "links": [
            {
                "label": "Documentation app",
                "url": "https://payer.example.org/launch",
                "type": "smart",
                "appContext": '{"order":"DeviceRequest/devreq-1"}',
                "autolaunchable": False,
            }
        ],
    }


def alternatives_card(crd_version: str, new_uuid: Any) -> dict[str, Any]:
    replacement = device_request("devreq-1")
    replacement["codeCodeableConcept"] = {"coding": [{"system": HCPCS, "code": "E0781"}]}
    return {
        "uuid": new_uuid(),
        "summary": "Infusion pump not covered for this drug: covered alternatives",
        "detail": "The ordered pump is not covered with this drug; E0781 is.",
        "indicator": "warning",
        "source": source(crd_version, "therapy-alternatives-req"),
        "selectionBehavior": "at-most-one",
        "suggestions": [
            {
                "label": "Order an ambulatory pump (E0781) instead",
                "uuid": new_uuid(),
                "isRecommended": True,
                "actions": [
                    {
                        "type": "update",
                        "description": "Change the pump to E0781",
                        "resource": replacement,
                    }
                ],
            },
            {
                "label": "Remove the pump order",
                "uuid": new_uuid(),
                "actions": [
                    {
                        "type": "delete",
                        "description": "Remove the pump order",
                        "resourceId": "DeviceRequest/devreq-1",
                    }
                ],
            },
        ],
        "overrideReasons": [
            {
                "system": "https://payer.example.org/override",
                "code": "disagree",
                "display": "Clinician disagrees",
            }
        ],
    }


CARD_BUILDERS = {
    "instructions": instructions_card,
    "external-reference": external_reference_card,
    "launch-smart-app": smart_app_card,
    "propose-alternate-request": alternatives_card,
}


def every_card(crd_version: str) -> list[dict[str, Any]]:
    new_uuid = sequential_uuids()
    return [build(crd_version, new_uuid) for build in CARD_BUILDERS.values()]


def subs_of(body: dict[str, Any], action: int = 0) -> list[dict[str, Any]]:
    """The sub-extensions of the first coverage-information extension of a system action."""
    extensions: list[dict[str, Any]] = body["systemActions"][action]["resource"]["extension"]
    return extensions[0]["extension"]


def without(subs: list[dict[str, Any]], url: str) -> None:
    subs[:] = [s for s in subs if s["url"] != url]


def set_code(subs: list[dict[str, Any]], url: str, code: str) -> None:
    for s in subs:
        if s["url"] == url:
            s["valueCode"] = code


def problems_of(body: dict[str, Any], **call: str) -> tuple[str, ...]:
    with pytest.raises(ResponseInvalid) as caught:
        validate_cds_response(body, **call)
    return caught.value.problems


def rejected_only_for(body: dict[str, Any], rule: str, **call: str) -> str:
    """The response has exactly one problem and it names ``rule``; returns that problem."""
    problems = problems_of(body, **call)
    assert len(problems) == 1, problems
    assert rule in problems[0], problems
    return problems[0]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def response_2_0() -> dict[str, Any]:
    """A valid CRD 2.0 order-sign response: every card type and a conditional assertion."""
    return {"cards": every_card("2.0"), "systemActions": [coverage_action(conditional_2_0())]}


@pytest.fixture
def response_2_2() -> dict[str, Any]:
    """A valid CRD 2.2 order-sign response: every card type and a categorised assertion."""
    return {"cards": every_card("2.2"), "systemActions": [coverage_action(conditional_2_2())]}


@pytest.fixture
def first_card(response_2_0: dict[str, Any]) -> dict[str, Any]:
    """The instructions card of ``response_2_0`` (edits show up in the response)."""
    card: dict[str, Any] = response_2_0["cards"][0]
    return card


@pytest.fixture
def alternatives(response_2_0: dict[str, Any]) -> dict[str, Any]:
    """The propose-alternate-request card of ``response_2_0``, with its two suggestions."""
    card: dict[str, Any] = response_2_0["cards"][3]
    return card


# --- what it accepts -------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(response_schema())


def test_accepts_a_conditional_2_0_assertion_with_every_card_type(
    response_2_0: dict[str, Any],
) -> None:
    validate_cds_response(response_2_0, crd_version="2.0", hook="order-sign")


def test_accepts_a_2_2_assertion_with_detail_categories(response_2_2: dict[str, Any]) -> None:
    validate_cds_response(response_2_2, crd_version="2.2", hook="order-sign")


def test_accepts_repeated_doc_needed_in_2_1() -> None:
    extension = conditional_2_0()
    extension["extension"].insert(4, sub("doc-needed", valueCode="patient"))
    body = {"cards": every_card("2.1"), "systemActions": [coverage_action(extension)]}
    validate_cds_response(body, crd_version="2.1")


def test_accepts_an_indeterminate_2_2_assertion_with_a_technical_reason() -> None:
    technical = {"coding": [{"system": TEMP, "code": "technical"}]}
    extension = coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode="indeterminate"),
        sub("pa-needed", valueCode="indeterminate"),
        sub("reason", valueCodeableConcept=technical),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0003"),
    )
    validate_cds_response(
        {"cards": [], "systemActions": [coverage_action(extension)]},
        crd_version="2.2",
        hook="order-dispatch",
    )


def test_accepts_not_covered_without_pa_needed() -> None:
    extension = coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode="not-covered"),
        sub("reason", valueCodeableConcept={"text": "E0784 is not covered for this drug"}),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0004"),
    )
    validate_cds_response({"cards": [], "systemActions": [coverage_action(extension)]})


def test_accepts_no_guidance_as_an_empty_card_list() -> None:
    validate_cds_response({"cards": []})


@pytest.mark.parametrize("card_type", sorted(CARD_BUILDERS))
@pytest.mark.parametrize("crd_version", ["2.0", "2.1", "2.2"])
def test_accepts_each_card_type_alone(card_type: str, crd_version: str) -> None:
    card = CARD_BUILDERS[card_type](crd_version, sequential_uuids())
    validate_cds_response({"cards": [card]}, crd_version=crd_version)


def test_accepts_a_summary_of_139_characters(
    response_2_0: dict[str, Any], first_card: dict[str, Any]
) -> None:
    first_card["summary"] = "x" * 139
    validate_cds_response(response_2_0)


def test_assertions_for_one_coverage_may_share_their_id() -> None:
    body = {
        "cards": [],
        "systemActions": [
            coverage_action(conditional_2_0(), "devreq-1"),
            coverage_action(conditional_2_0(), "devreq-2"),
        ],
    }
    validate_cds_response(body)


# --- general CDS Hooks rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    "empty", [None, "", " ", [], {}], ids=["null", "empty-string", "blank", "list", "object"]
)
def test_rejects_a_null_or_empty_card_field(
    response_2_0: dict[str, Any], first_card: dict[str, Any], empty: Any
) -> None:
    first_card["detail"] = empty
    problem = rejected_only_for(response_2_0, "[no-empty]")
    assert problem.startswith("$.cards[0].detail:")


def test_rejects_a_null_inside_an_action_resource(response_2_0: dict[str, Any]) -> None:
    response_2_0["systemActions"][0]["resource"]["note"] = None
    problems = problems_of(response_2_0)
    assert "$.systemActions[0].resource.note: null is not allowed" in problems[0]
    assert all("[no-empty]" in p or "[fhir]" in p for p in problems), problems


def test_rejects_an_empty_list(response_2_0: dict[str, Any], first_card: dict[str, Any]) -> None:
    first_card["overrideReasons"] = []
    problem = rejected_only_for(response_2_0, "[no-empty]")
    assert problem.startswith("$.cards[0].overrideReasons: empty array")


def test_rejects_an_empty_system_action_list() -> None:
    rejected_only_for({"cards": [], "systemActions": []}, "[no-empty]")


def test_rejects_a_summary_of_140_characters(
    response_2_0: dict[str, Any], first_card: dict[str, Any]
) -> None:
    first_card["summary"] = "x" * 140
    problem = rejected_only_for(response_2_0, "is too long")
    assert problem.startswith("$.cards[0].summary:")


def test_rejects_a_card_without_uuid(
    response_2_0: dict[str, Any], first_card: dict[str, Any]
) -> None:
    del first_card["uuid"]
    problem = rejected_only_for(response_2_0, "'uuid' is a required property")
    assert problem.startswith("$.cards[0]:")


@pytest.mark.parametrize(
    "bad_uuid",
    [
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-00000000000A",
        "card-1",
    ],
)
def test_rejects_a_card_uuid_that_is_not_a_bare_lower_case_uuid(
    response_2_0: dict[str, Any], first_card: dict[str, Any], bad_uuid: str
) -> None:
    first_card["uuid"] = bad_uuid
    rejected_only_for(response_2_0, "$.cards[0].uuid:")


def test_rejects_a_suggestion_without_uuid(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    del alternatives["suggestions"][1]["uuid"]
    rejected_only_for(response_2_0, "$.cards[3].suggestions[1]: 'uuid' is a required property")


def test_rejects_a_uuid_used_twice(
    response_2_0: dict[str, Any], first_card: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    alternatives["suggestions"][0]["uuid"] = first_card["uuid"]
    problem = rejected_only_for(response_2_0, "[unique-uuid]")
    assert problem.startswith("$.cards[3].suggestions[0].uuid:")


def test_rejects_suggestions_without_selection_behavior(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    del alternatives["selectionBehavior"]
    rejected_only_for(response_2_0, "cds-resp-6")


def test_rejects_two_recommended_suggestions_when_at_most_one(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    alternatives["suggestions"][1]["isRecommended"] = True
    rejected_only_for(response_2_0, "[cds-resp-1]")


def test_rejects_an_override_reason_without_display(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    del alternatives["overrideReasons"][0]["display"]
    rejected_only_for(response_2_0, "cds-resp-4")


def test_rejects_app_context_on_an_absolute_link(response_2_0: dict[str, Any]) -> None:
    response_2_0["cards"][1]["links"][0]["appContext"] = '{"order":"DeviceRequest/devreq-1"}'
    problem = rejected_only_for(response_2_0, "cds-resp-3")
    assert problem.startswith("$.cards[1].links[0].type:")


def test_rejects_a_relative_link_url(response_2_0: dict[str, Any]) -> None:
    response_2_0["cards"][1]["links"][0]["url"] = "/policies/MCS051.01"
    rejected_only_for(response_2_0, "$.cards[1].links[0].url:")


def test_rejects_a_card_without_topic(
    response_2_0: dict[str, Any], first_card: dict[str, Any]
) -> None:
    del first_card["source"]["topic"]
    rejected_only_for(response_2_0, "$.cards[0].source: 'topic' is a required property")


def test_rejects_a_topic_system_of_another_crd_version(response_2_2: dict[str, Any]) -> None:
    response_2_2["cards"][0]["source"]["topic"]["system"] = TEMP
    problem = rejected_only_for(response_2_2, "[crd-resp-5]", crd_version="2.2")
    assert "cdshooks-card-type" in problem


def test_rejects_a_topic_code_outside_the_crd_response_types(
    response_2_0: dict[str, Any], first_card: dict[str, Any]
) -> None:
    first_card["source"]["topic"]["code"] = "order-select"
    rejected_only_for(response_2_0, "is not a code of the CRD Response Types")


def test_rejects_a_system_action_without_description(response_2_0: dict[str, Any]) -> None:
    del response_2_0["systemActions"][0]["description"]
    rejected_only_for(response_2_0, "$.systemActions[0]: 'description' is a required property")


def test_rejects_a_delete_that_carries_a_resource(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    alternatives["suggestions"][1]["actions"][0]["resource"] = device_request()
    rejected_only_for(response_2_0, "cds-resp-2")


def test_rejects_an_unknown_top_level_field(response_2_0: dict[str, Any]) -> None:
    response_2_0["warnings"] = ["none"]
    rejected_only_for(response_2_0, "Additional properties are not allowed")


def test_rejects_an_invalid_fhir_resource(response_2_0: dict[str, Any]) -> None:
    resource = response_2_0["systemActions"][0]["resource"]
    resource["authoredOn"] = "28 November 2026"
    del resource["subject"]
    problems = problems_of(response_2_0)
    assert {p.split(":")[0] for p in problems} == {
        "$.systemActions[0].resource.authoredOn",
        "$.systemActions[0].resource.subject",
    }
    assert all(p.endswith("[fhir]") for p in problems), problems


def test_rejects_a_resource_type_fhir_does_not_have(
    response_2_0: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    alternatives["suggestions"][0]["actions"][0]["resource"]["resourceType"] = "PumpRequest"
    rejected_only_for(response_2_0, "not a FHIR R4B resource")


def test_lists_every_problem_at_once(
    response_2_0: dict[str, Any], first_card: dict[str, Any], alternatives: dict[str, Any]
) -> None:
    first_card["summary"] = "x" * 200
    del alternatives["selectionBehavior"]
    without(subs_of(response_2_0), "pa-needed")
    problems = problems_of(response_2_0)
    assert len(problems) == 3, problems
    with pytest.raises(ResponseInvalid, match=r"3 problem\(s\)"):
        validate_cds_response(response_2_0)


def test_refuses_an_unknown_crd_version_as_a_usage_error(response_2_0: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="crd_version") as caught:
        validate_cds_response(response_2_0, crd_version="2.0.1")
    assert not isinstance(caught.value, ResponseInvalid)


# --- the coverage-information extension ------------------------------------------------------


def test_rejects_coverage_information_inside_a_card(response_2_0: dict[str, Any]) -> None:
    action = response_2_0.pop("systemActions")[0]
    response_2_0["cards"][3]["suggestions"][0]["actions"] = [action]
    problem = rejected_only_for(response_2_0, "[crd-resp-25]")
    assert problem.startswith("$.cards[3].suggestions[0].actions[0]:")


def test_rejects_coverage_information_in_a_create(response_2_0: dict[str, Any]) -> None:
    response_2_0["systemActions"][0]["type"] = "create"
    rejected_only_for(response_2_0, "[crd-resp-25]")


def test_rejects_two_system_actions_for_one_order(response_2_0: dict[str, Any]) -> None:
    response_2_0["systemActions"].append(coverage_action(conditional_2_0()))
    rejected_only_for(response_2_0, "[crd-resp-29]")


def test_rejects_doc_needed_twice_in_2_0(response_2_0: dict[str, Any]) -> None:
    subs_of(response_2_0).insert(4, sub("doc-needed", valueCode="admin"))
    rejected_only_for(response_2_0, "doc-needed appears 2 time(s); CRD 2.0 allows 0..1")


def test_rejects_indeterminate_in_2_0(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "covered", "indeterminate")
    problems = problems_of(response_2_0)
    assert "'indeterminate' is not a covered code in CRD 2.0" in problems[0], problems


def test_rejects_patient_doc_needed_in_2_0(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "doc-needed", "patient")
    rejected_only_for(response_2_0, "'patient' is not a doc-needed code in CRD 2.0")


def test_rejects_a_url_detail_value_in_2_0(response_2_0: dict[str, Any]) -> None:
    subs_of(response_2_0).append(detail("policy-link", valueUrl=POLICY_URL))
    rejected_only_for(response_2_0, "found valueUrl (CRD 2.0)")


def test_rejects_a_detail_category_in_2_0(response_2_0: dict[str, Any]) -> None:
    subs_of(response_2_0).append(detail("instructions", "cat-other", valueString="Call us"))
    rejected_only_for(response_2_0, "'category' is not a sub-extension of this extension")


def test_rejects_a_detail_without_category_in_2_2(response_2_2: dict[str, Any]) -> None:
    subs_of(response_2_2).append(detail("instructions", valueString="Call us"))
    rejected_only_for(
        response_2_2, "category appears 0 time(s); CRD 2.2 allows 1..1", crd_version="2.2"
    )


def test_rejects_a_sub_extension_crd_does_not_define(response_2_0: dict[str, Any]) -> None:
    subs_of(response_2_0).append(sub("identifier", valueString="what the reference RI sends"))
    rejected_only_for(response_2_0, "'identifier' is not a sub-extension")


def test_rejects_a_missing_coverage_assertion_id(response_2_0: dict[str, Any]) -> None:
    without(subs_of(response_2_0), "coverage-assertion-id")
    rejected_only_for(response_2_0, "coverage-assertion-id appears 0 time(s)")


def test_rejects_a_date_of_the_wrong_type(response_2_0: dict[str, Any]) -> None:
    subs = subs_of(response_2_0)
    without(subs, "date")
    subs.append(sub("date", valueDateTime="2026-11-28T15:00:00Z"))
    rejected_only_for(response_2_0, "date needs exactly one of valueDate")


def test_rejects_a_coverage_reference_to_something_else(response_2_0: dict[str, Any]) -> None:
    subs_of(response_2_0)[0]["valueReference"] = {"reference": "Patient/pat-1"}
    rejected_only_for(response_2_0, "coverage must reference a Coverage")


def test_q1_rejects_a_questionnaire_without_doc_needed(response_2_0: dict[str, Any]) -> None:
    without(subs_of(response_2_0), "doc-needed")
    rejected_only_for(response_2_0, "[crd-ci-q1]")


@pytest.mark.parametrize(
    ("covered", "with_pa_needed"),
    [("conditional", False), ("covered", False), ("not-covered", True)],
)
def test_q2_pa_needed_is_present_exactly_when_not_not_covered(
    covered: str, with_pa_needed: bool
) -> None:
    extension = coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode=covered),
        *([sub("pa-needed", valueCode="no-auth")] if with_pa_needed else []),
        *([sub("info-needed", valueCode="performer")] if covered == "conditional" else []),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0005"),
    )
    body = {"cards": [], "systemActions": [coverage_action(extension)]}
    for crd_version in ("2.0", "2.1", "2.2"):
        rejected_only_for(copy.deepcopy(body), "[crd-ci-q2]", crd_version=crd_version)


def test_q3_rejects_conditional_without_info_needed(response_2_2: dict[str, Any]) -> None:
    without(subs_of(response_2_2), "info-needed")
    rejected_only_for(response_2_2, "[crd-ci-q3]", crd_version="2.2")


def test_q3_in_2_0_rejects_info_needed_without_conditional(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "covered", "covered")
    rejected_only_for(response_2_0, "(CRD 2.0.1 q3) [crd-ci-q3]")


def test_q4_rejects_withpa_documentation_when_no_auth(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "doc-purpose", "withpa")
    rejected_only_for(response_2_0, "[crd-ci-q4]")


def test_q5_rejects_satisfied_pa_without_its_id(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "pa-needed", "satisfied")
    set_code(subs_of(response_2_0), "doc-purpose", "withclaim")
    rejected_only_for(response_2_0, "[crd-ci-q5]")


def test_q6_rejects_other_information_needed_without_reason(response_2_2: dict[str, Any]) -> None:
    subs = subs_of(response_2_2)
    without(subs, "reason")
    without(subs, "doc-purpose")
    rejected_only_for(response_2_2, "[crd-ci-q6]", crd_version="2.2")


def test_q7_rejects_a_reason_with_neither_text_nor_a_crd_code(
    response_2_0: dict[str, Any],
) -> None:
    for s in subs_of(response_2_0):
        if s["url"] == "reason":
            s["valueCodeableConcept"] = {
                "coding": [{"system": "https://payer.example.org/r", "code": "R17"}]
            }
    rejected_only_for(response_2_0, "[crd-ci-q7]")


def test_q8_rejects_doc_purpose_without_reason(response_2_0: dict[str, Any]) -> None:
    set_code(subs_of(response_2_0), "info-needed", "location")
    without(subs_of(response_2_0), "reason")
    rejected_only_for(response_2_0, "[crd-ci-q8]")


def test_q9_rejects_indeterminate_without_reason() -> None:
    extension = coverage_information(
        sub("coverage", valueReference={"reference": COVERAGE}),
        sub("covered", valueCode="indeterminate"),
        sub("pa-needed", valueCode="no-auth"),
        sub("date", valueDate="2026-11-28"),
        sub("coverage-assertion-id", valueString="CA-2026-11-28-0006"),
    )
    body = {"cards": [], "systemActions": [coverage_action(extension)]}
    rejected_only_for(body, "[crd-ci-q9]", crd_version="2.2")


def test_rejects_two_assertion_ids_for_one_coverage() -> None:
    second = conditional_2_0()
    second["extension"][-1]["valueString"] = "CA-2026-11-28-0099"
    body = {
        "cards": [],
        "systemActions": [
            coverage_action(conditional_2_0(), "devreq-1"),
            coverage_action(second, "devreq-2"),
        ],
    }
    problem = rejected_only_for(body, "[crd-resp-33]")
    assert f"coverage {COVERAGE} has 2 coverage-assertion-ids" in problem


def test_rejects_one_assertion_id_for_two_coverages() -> None:
    second = conditional_2_0()
    second["extension"][0]["valueReference"] = {"reference": OTHER_COVERAGE}
    body = {
        "cards": [],
        "systemActions": [
            coverage_action(conditional_2_0(), "devreq-1"),
            coverage_action(second, "devreq-2"),
        ],
    }
    rejected_only_for(body, "[crd-resp-32]")


@pytest.mark.parametrize("crd_version", ["2.0", "2.1", "2.2"])
def test_rejects_clinical_documentation_on_order_select(crd_version: str) -> None:
    extension = conditional_2_2() if crd_version == "2.2" else conditional_2_0()
    body = {"cards": [], "systemActions": [coverage_action(extension)]}
    validate_cds_response(copy.deepcopy(body), crd_version=crd_version, hook="order-sign")
    rejected_only_for(body, "[crd-hook-19]", crd_version=crd_version, hook="order-select")


# --- the CRD examples (../shared/crd-examples) -----------------------------------------------

# Each example, wrapped into a response where it is a bare card or action, with what the
# validator finds wrong in it as (json path, rule) pairs; an empty set means it is accepted.
# The CRD test kit's examples predate the CRD 2.2 base profile and break these rules:
# - card uuid missing (every card_responses/*.json card, both cards of the appointment-book
#   response): required by the CRD base response profile, which this service follows;
# - suggestion uuid missing (companions_prerequisites, create_update_coverage_information,
#   propose_alternate_request, request_form_completion, valid_cards 3-5): CRD resp-3;
# - propose_alternate_request: an empty `actions` array (CDS Hooks forbids empty values);
# - launch_smart_app: link url 'INFERNO_PLACEHOLDER' is not an absolute URL;
# - request_form_completion: Questionnaire.version is the number 2, FHIR wants a string;
# - valid_cards: uuids that are not uuids ('jksfjuisldklsior'), two cards sharing a uuid twice,
#   a suggestion uuid written with its 'urn:uuid:' prefix, and topic code 'order-select',
#   which is a hook name, not a CRD response type;
# - crd_authorization_hook_response: topic code 'appointment-book', also a hook name;
# - coverage_info_system_action_conditional: conditional without pa-needed (2.0.1 q2) and
#   doc-purpose without reason (q8).
# coverage_info_system_action_covered is the one example the validator accepts unchanged.
# (No example breaks the description-on-actions rule: the kit's actions all have one.)

CARD = "$.cards[0]"
SUGGESTION = "$.cards[0].suggestions[0]"


def _valid_cards_findings() -> set[tuple[str, str]]:
    findings = {(f"$.cards[{i}].uuid", "[schema]") for i in range(7)}
    findings |= {(f"$.cards[{i}].suggestions[0]", "[schema]") for i in (3, 4, 5)}
    findings |= {("$.cards[6].suggestions[0].uuid", "[schema]")}
    findings |= {(f"$.cards[{i}].source.topic.code", "[crd-resp-5]") for i in (0, 2, 3, 4, 5, 6)}
    findings |= {("$.cards[1].uuid", "[unique-uuid]"), ("$.cards[6].uuid", "[unique-uuid]")}
    return findings


EXAMPLES: dict[str, tuple[str, str, set[tuple[str, str]]]] = {
    # file: (how it is wrapped, hook, findings)
    "card_responses/companions_prerequisites.json": (
        "card",
        "order-sign",
        {(CARD, "[schema]"), (SUGGESTION, "[schema]")},
    ),
    "card_responses/create_update_coverage_information.json": (
        "card",
        "order-sign",
        {(CARD, "[schema]"), (SUGGESTION, "[schema]")},
    ),
    "card_responses/external_reference.json": ("card", "order-sign", {(CARD, "[schema]")}),
    "card_responses/instructions.json": ("card", "order-sign", {(CARD, "[schema]")}),
    "card_responses/launch_smart_app.json": (
        "card",
        "order-sign",
        {(CARD, "[schema]"), ("$.cards[0].links[0].url", "[schema]")},
    ),
    "card_responses/propose_alternate_request.json": (
        "card",
        "order-sign",
        {
            (CARD, "[schema]"),
            (SUGGESTION, "[schema]"),
            ("$.cards[0].suggestions[0].actions", "[no-empty]"),
        },
    ),
    "card_responses/request_form_completion.json": (
        "card",
        "order-sign",
        {
            (CARD, "[schema]"),
            (SUGGESTION, "[schema]"),
            ("$.cards[0].suggestions[0].actions[0].resource.version", "[fhir]"),
        },
    ),
    "spec-fixtures/valid_cards.json": ("cards", "order-select", _valid_cards_findings()),
    "spec-fixtures/crd_authorization_hook_response.json": (
        "response",
        "appointment-book",
        {
            ("$.cards[0]", "[schema]"),
            ("$.cards[1]", "[schema]"),
            ("$.cards[0].source.topic.code", "[crd-resp-5]"),
            ("$.cards[1].source.topic.code", "[crd-resp-5]"),
        },
    ),
    "spec-fixtures/coverage_info_system_action_conditional.json": (
        "system-action",
        "order-sign",
        {
            ("$.systemActions[0].resource.extension[0]", "[crd-ci-q2]"),
            ("$.systemActions[0].resource.extension[0]", "[crd-ci-q8]"),
        },
    ),
    "spec-fixtures/coverage_info_system_action_covered.json": (
        "system-action",
        "order-sign",
        set(),
    ),
}


def _as_response(example: Any, wrapping: str) -> dict[str, Any]:
    if wrapping == "card":
        return {"cards": [example]}
    if wrapping == "cards":
        return {"cards": example}
    if wrapping == "system-action":
        return {"cards": [], "systemActions": [example]}
    return dict(example)


def _findings(problems: tuple[str, ...]) -> set[tuple[str, str]]:
    pairs = set()
    for problem in problems:
        match = re.match(r"^(\$[^:]*): .*(\[[a-z0-9-]+\])$", problem)
        assert match, problem
        pairs.add((match.group(1), match.group(2)))
    return pairs


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_crd_examples_are_judged_as_documented(shared_dir: Path, example: str) -> None:
    wrapping, hook, expected = EXAMPLES[example]
    body = _as_response(load_json(shared_dir / "crd-examples" / example), wrapping)
    try:
        validate_cds_response(body, crd_version="2.0", hook=hook)
    except ResponseInvalid as invalid:
        found = _findings(invalid.problems)
    else:
        found = set()
    assert found == expected, json.dumps(sorted(found), indent=1)


def test_every_crd_card_example_is_judged(shared_dir: Path) -> None:
    judged = {name for name in EXAMPLES if name.startswith("card_responses/")}
    on_disk = {
        f"card_responses/{p.name}"
        for p in (shared_dir / "crd-examples" / "card_responses").glob("*.json")
    }
    assert judged == on_disk
