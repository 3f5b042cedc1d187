"""The documentation Questionnaire generated from the policy's documentation items."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from coverage_policy.loader import load_policy
from coverage_policy.model import DocumentationItem, Period, Policy
from fhir_mappings.documentation import documentation_facts
from fhir_mappings.record import build_record
from hooks.questionnaire import (
    computable_name,
    documentation_questionnaire,
    matches_canonical,
    searchset_bundle,
)


@pytest.fixture
def policy() -> Policy:
    """The packaged policy, whatever documentation items it holds today."""
    return load_policy()


@pytest.fixture
def policy_with_every_type(policy: Policy) -> Policy:
    """The packaged policy plus a date item and a choice item, so every answer type is
    generated whatever the packaged data holds, and an effective end date."""
    extra = {
        "test-visit-date": DocumentationItem("test-visit-date", "Date of the visit", "date"),
        "test-choice": DocumentationItem(
            "test-choice", "Pick one", "choice", (("a", "Option A"), ("b", "Option B")), "admin"
        ),
    }
    return dataclasses.replace(
        policy,
        documentation={**policy.documentation, **extra},
        effective=Period(date(2021, 1, 19), date(2030, 1, 1)),
    )


def _validate(resource: dict[str, Any]) -> Any:
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_questionnaire_is_valid_fhir_r4(policy: Policy) -> None:
    """fhir.resources R4B accepts it."""
    model = _validate(documentation_questionnaire(policy, publisher="Example Plan"))
    assert model.status == "active"


def test_questionnaire_names_the_policy_canonical(policy: Policy) -> None:
    """id, url and version are the ones the cards and the CRD extension name."""
    questionnaire = documentation_questionnaire(policy)
    assert questionnaire["id"] == policy.questionnaire_id
    assert f"{questionnaire['url']}|{questionnaire['version']}" == policy.questionnaire_url
    assert questionnaire["title"] == policy.questionnaire_title
    assert questionnaire["subjectType"] == ["Patient"]
    assert questionnaire["date"] == policy.effective.start.isoformat()
    assert "publisher" not in questionnaire


def test_one_item_per_documentation_item(policy_with_every_type: Policy) -> None:
    """linkId = item id, text and type from the item, in the policy's order."""
    policy = policy_with_every_type
    questionnaire = documentation_questionnaire(policy)
    _validate(questionnaire)
    items = questionnaire["item"]
    assert [i["linkId"] for i in items] == list(policy.documentation)
    for item in items:
        spec = policy.documentation[item["linkId"]]
        assert item["text"] == spec.text
        assert item["type"] == spec.answer_type
        assert item["code"][0]["code"] == spec.id
        assert item["extension"][0]["valueCode"] == spec.doc_type
    assert {i["type"] for i in items} == {"boolean", "choice", "date", "decimal"}
    for item in items:
        spec = policy.documentation[item["linkId"]]
        units = [e for e in item["extension"] if e["url"].endswith("questionnaire-unit")]
        assert [u["valueCoding"]["code"] for u in units] == ([spec.unit] if spec.unit else [])


def test_choice_items_offer_codings_under_the_questionnaire_base(
    policy_with_every_type: Policy,
) -> None:
    """Each option is a valueCoding in a code system below the questionnaire's base URL."""
    questionnaire = documentation_questionnaire(policy_with_every_type)
    base = questionnaire["url"].rsplit("/Questionnaire/", 1)[0]
    choices = [i for i in questionnaire["item"] if i["type"] == "choice"]
    assert choices
    for item in choices:
        spec = policy_with_every_type.documentation[item["linkId"]]
        codings = [o["valueCoding"] for o in item["answerOption"]]
        assert [(c["code"], c["display"]) for c in codings] == list(spec.options)
        assert {c["system"] for c in codings} == {f"{base}/CodeSystem/{spec.id}"}
    for item in questionnaire["item"]:
        if item["type"] != "choice":
            assert "answerOption" not in item


def test_help_names_the_criteria_an_item_settles(policy: Policy) -> None:
    """Every item a criterion reads carries a help display item naming that criterion."""
    questionnaire = documentation_questionnaire(policy)
    helps = {i["linkId"]: i.get("item", []) for i in questionnaire["item"]}
    for criterion in policy.criteria.values():
        for item_id in criterion.documentation:
            (help_item,) = helps[item_id]
            assert help_item["type"] == "display"
            assert criterion.id in help_item["text"]


def test_effective_end_is_inclusive_in_fhir(policy_with_every_type: Policy) -> None:
    """The policy's exclusive end date becomes FHIR's inclusive effectivePeriod.end."""
    questionnaire = documentation_questionnaire(policy_with_every_type)
    assert questionnaire["effectivePeriod"] == {"start": "2021-01-19", "end": "2029-12-31"}


def test_unknown_answer_type_is_refused(policy: Policy) -> None:
    """An answer type with no Questionnaire item type is a programming error, said so."""
    odd = dataclasses.replace(
        policy, documentation={"odd": DocumentationItem("odd", "Odd", "integer")}
    )
    with pytest.raises(ValueError, match="odd"):
        documentation_questionnaire(odd)


@pytest.mark.parametrize(
    ("identifier", "name"),
    [
        ("mcs051-infusion-pump-documentation", "Mcs051InfusionPumpDocumentation"),
        ("051-docs", "Q051Docs"),
        ("", "Documentation"),
    ],
)
def test_computable_name(identifier: str, name: str) -> None:
    assert computable_name(identifier) == name


def test_matches_canonical_with_and_without_version(policy: Policy) -> None:
    questionnaire = documentation_questionnaire(policy)
    url, version = questionnaire["url"], questionnaire["version"]
    assert matches_canonical(questionnaire, url)
    assert matches_canonical(questionnaire, f"{url}|{version}")
    assert not matches_canonical(questionnaire, f"{url}|0.0.1")
    assert not matches_canonical(questionnaire, f"{url}-other")


def test_searchset_bundle_is_valid_fhir_r4(policy: Policy) -> None:
    questionnaire = documentation_questionnaire(policy)
    bundle = searchset_bundle(
        [questionnaire], "https://cds.example", "https://cds.example/fhir/Questionnaire"
    )
    _validate(bundle)
    assert bundle["total"] == 1
    assert bundle["entry"][0]["fullUrl"] == (
        f"https://cds.example/fhir/Questionnaire/{policy.questionnaire_id}"
    )
    empty = searchset_bundle([], "https://cds.example", "https://cds.example/fhir/Questionnaire")
    _validate(empty)
    assert empty["total"] == 0
    assert "entry" not in empty


def _answer(item: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A QuestionnaireResponse answer to ``item`` and the fact value it should give."""
    if item["type"] == "boolean":
        return {"valueBoolean": True}, True
    if item["type"] == "choice":
        coding = item["answerOption"][-1]["valueCoding"]
        return {"valueCoding": coding}, coding["code"]
    if item["type"] == "decimal":
        return {"valueDecimal": 0.4}, 0.4
    return {"valueDate": "2026-10-15"}, date(2026, 10, 15)


def test_questionnaire_response_round_trip(policy_with_every_type: Policy) -> None:
    """Answers to the generated Questionnaire come back as ``doc.<id>`` facts."""
    policy = policy_with_every_type
    questionnaire = documentation_questionnaire(policy)
    answers, expected = [], {}
    for item in questionnaire["item"]:
        answer, value = _answer(item)
        answers.append({"linkId": item["linkId"], "text": item["text"], "answer": [answer]})
        expected[f"doc.{item['linkId']}"] = value
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "questionnaire": f"{questionnaire['url']}|{questionnaire['version']}",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-10-20T10:00:00Z",
        "item": answers,
    }
    _validate(response)
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": response}]}
    record = build_record({"questionnaireResponses": bundle})
    facts = documentation_facts(
        record, policy.documentation, policy.questionnaire_url, date(2026, 11, 1)
    )
    assert {name: fact.value for name, fact in facts.items()} == expected
    assert {fact.evidence[0].reference for fact in facts.values()} == {"QuestionnaireResponse/qr-1"}
