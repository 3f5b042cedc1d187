"""Cards: indicator by outcome, citations and evidence, configuration honoured."""

from __future__ import annotations

import copy
import json
from datetime import date, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from coverage_policy.loader import load_policy
from hooks.cards import PRECONDITION_CARDS
from hooks.respond import effective_configuration
from tests.conftest import FIXTURES, ORDER_SIGN, load_json
from tests.response_validation import validate_cds_response


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(load_json(FIXTURES / "requests" / f"{name}.json"))


def cards_for(client: FlaskClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    validate_cds_response(response.json)
    return response.json["cards"]  # type: ignore[no-any-return]


def topics(cards: list[dict[str, Any]]) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]


def test_covered_is_info_with_links_and_evidence(client: FlaskClient) -> None:
    (card,) = cards_for(client, fixture("order-sign__e0784-insulin__covered"))
    assert card["indicator"] == "info"
    assert "overrideReasons" not in card
    assert card["source"]["label"] == "Example Medicare Advantage Plan"
    assert {link["label"] for link in card["links"]} >= {
        "NCD 280.14 Infusion Pumps",
        "LCD L33794 External Infusion Pumps",
    }
    assert all(link["type"] == "absolute" for link in card["links"])
    assert all(
        link["url"].startswith("https://")
        for link in card["links"]
        if not link["label"].startswith("Decision details")
    )
    # A covered decision is one sentence: no criteria met, nothing "not shown".
    assert card["detail"].startswith("**Covered**: ")
    assert "\n" not in card["detail"]
    assert len(card["summary"]) < 140


def test_unmet_criteria_are_listed_with_citation_and_evidence(client: FlaskClient) -> None:
    card = cards_for(client, fixture("order-sign__e0784-insulin__not-covered"))[0]
    assert card["indicator"] == "warning"
    assert "**Against coverage**" in card["detail"]
    # What was seen, rounded like a lab report; no machine ids (citations are on the page).
    assert (
        "Fasting C-peptide 2.10 ng/mL (lab lower limit 0.80 ng/mL) on 2026-10-14" in card["detail"]
    )
    assert "Observation/" not in card["detail"]
    assert "Not shown" not in card["detail"]
    assert all(r["display"] for r in card["overrideReasons"])


def test_documentation_prompt_lists_exactly_what_to_document(client: FlaskClient) -> None:
    cards = cards_for(client, fixture("order-sign__e0784-insulin__conditional"))
    (prompt,) = [c for c in cards if c["source"]["topic"]["code"] == "claim"]
    assert "Completed a comprehensive diabetes education program" in prompt["detail"]
    assert "`" not in prompt["detail"]
    assert "csii-" not in prompt["detail"]
    assert "one of:" in prompt["detail"]
    assert "Insulin pump for use in the home setting" not in prompt["detail"]  # met already
    assert "links" not in prompt
    assert "suggestions" not in prompt


def test_alternatives_replace_or_remove_the_pump(client: FlaskClient) -> None:
    cards = cards_for(client, fixture("order-sign__e0781-vancomycin__not-covered"))
    (alternatives,) = [
        c for c in cards if c["source"]["topic"]["code"] == "therapy-alternatives-req"
    ]
    assert alternatives["selectionBehavior"] == "at-most-one"
    elastomeric, gravity = alternatives["suggestions"]
    (update,) = elastomeric["actions"]
    assert update["type"] == "update"
    assert update["resource"]["codeCodeableConcept"]["coding"][0]["code"] == "A4305"
    assert gravity["actions"] == [
        {
            "type": "delete",
            "description": "Remove the infusion pump order",
            "resourceId": "DeviceRequest/devreq-e0781",
        }
    ]
    assert len({elastomeric["uuid"], gravity["uuid"], alternatives["uuid"]}) == 3


def test_implantable_insulin_pump_suggests_external_csii(client: FlaskClient) -> None:
    cards = cards_for(client, fixture("order-sign__e0783-insulin__not-covered"))
    (alternatives,) = [c for c in cards if "suggestions" in c]
    (action,) = alternatives["suggestions"][0]["actions"]
    assert action["resource"]["codeCodeableConcept"]["coding"][0]["code"] == "E0784"


def test_drug_only_vancomycin_gets_a_new_elastomeric_pump_order(client: FlaskClient) -> None:
    cards = cards_for(client, fixture("order-sign__vancomycin-drug-only__not-covered"))
    (alternatives,) = [c for c in cards if "suggestions" in c]
    (suggestion,) = alternatives["suggestions"]  # gravity drip has no pump order to remove
    (create,) = suggestion["actions"]
    assert create["type"] == "create"
    assert create["resource"]["basedOn"] == [{"reference": "MedicationRequest/medreq-vanco"}]


@pytest.mark.parametrize("disabled", ["guideline", "claim", "therapy-alternatives-req"])
def test_each_card_type_can_be_switched_off(client: FlaskClient, disabled: str) -> None:
    name = (
        "order-sign__e0784-insulin__conditional"
        if disabled == "claim"
        else "order-sign__e0781-vancomycin__not-covered"
    )
    body = fixture(name)
    assert disabled in topics(cards_for(client, copy.deepcopy(body)))
    body["extension"] = {"davinci-crd.configuration": {disabled: False}}
    assert disabled not in topics(cards_for(client, body))


def test_coverage_info_off_means_no_system_actions(client: FlaskClient) -> None:
    body = fixture("order-sign__e0784-insulin__covered")
    body["extension"] = {"davinci-crd.configuration": {"coverage-info": False}}
    response = client.post(ORDER_SIGN, json=body)
    assert "systemActions" not in response.json


def test_max_cards_keeps_the_most_important(client: FlaskClient) -> None:
    body = fixture("order-sign__e0781-vancomycin__not-covered")
    body["extension"] = {"davinci-crd.configuration": {"max-cards": 1}}
    (card,) = cards_for(client, body)
    assert card["source"]["topic"]["code"] == "guideline"
    body["extension"] = {"davinci-crd.configuration": {"max-cards": 0}}
    assert cards_for(client, body) == []


def test_configuration_ignores_unknown_options_and_wrong_types() -> None:
    configuration = effective_configuration(
        {"claim": "no", "max-cards": True, "guideline": False, "teleport": True, "insurance": 0}
    )
    assert configuration["claim"] is True
    assert configuration["max-cards"] == 10
    assert configuration["guideline"] is False
    assert "teleport" not in configuration
    assert configuration["insurance"] is True


def test_no_coverage_gives_cards_and_says_so(client: FlaskClient) -> None:
    cards = cards_for(client, fixture("order-sign__e0784-insulin-no-coverage__conditional"))
    assert topics(cards)[-1] == "insurance"
    assert "could not be confirmed" in cards[-1]["summary"]


def test_deceased_patient_gets_a_warning_not_a_decision(client: FlaskClient) -> None:
    body = fixture("order-sign__e0784-insulin__covered")
    body["prefetch"]["patient"]["deceasedDateTime"] = "2026-01-05"
    response = client.post(ORDER_SIGN, json=body)
    (card,) = response.json["cards"]
    assert card["indicator"] == "warning"
    assert "deceased" in card["summary"]
    assert "2026-01-05" in card["detail"]
    assert "systemActions" not in response.json


def test_a_patient_deceased_after_the_order_date_has_the_order_decided(
    client: FlaskClient,
) -> None:
    """The policy's deceased-patient precondition holds on or before the order date only."""
    body = fixture("order-sign__e0784-insulin__covered")
    ordered = min(
        entry["resource"]["authoredOn"][:10] for entry in body["context"]["draftOrders"]["entry"]
    )
    body["prefetch"]["patient"]["deceasedDateTime"] = ordered
    assert "deceased" in client.post(ORDER_SIGN, json=body).json["cards"][0]["summary"]
    day_after = date.fromisoformat(ordered) + timedelta(days=1)
    body["prefetch"]["patient"]["deceasedDateTime"] = day_after.isoformat()
    response = client.post(ORDER_SIGN, json=body)
    assert "covered under" in response.json["cards"][0]["summary"]
    assert "systemActions" in response.json


def test_a_patient_deceased_without_a_date_gets_the_warning(client: FlaskClient) -> None:
    body = fixture("order-sign__e0784-insulin__covered")
    body["prefetch"]["patient"]["deceasedBoolean"] = True
    (card,) = cards_for(client, body)
    assert "deceased on an unknown date" in card["detail"]


def test_every_precondition_outcome_has_its_card() -> None:
    schema = json.loads(
        resources.files("coverage_policy").joinpath("policy.schema.json").read_text()
    )
    precondition = schema["properties"]["preconditions"]["items"]["properties"]
    assert set(precondition["outcome"]["enum"]) == set(PRECONDITION_CARDS)
    assert {p.outcome for p in load_policy().preconditions} <= set(PRECONDITION_CARDS)


def test_no_bill_part_b_when_the_pump_is_not_covered(client: FlaskClient) -> None:
    """Part B covers a pump drug only when the LCD covers the pump: not for vancomycin."""
    vancomycin = decision_page(client, fixture("order-sign__e0781-vancomycin__not-covered"))
    assert "Bill Part B" not in vancomycin
    assert "Not Part B: drugs given through a pump are Part B only when" in vancomycin
    assert "Bill Part B" in decision_page(client, fixture("order-sign__e0784-insulin__covered"))


def decision_page(client: FlaskClient, body: dict[str, Any]) -> str:
    """The decision page the first coverage card links to (guidance is shown there)."""
    card = cards_for(client, body)[0]
    (url,) = [link["url"] for link in card["links"] if link["label"].startswith("Decision")]
    return client.get(urlsplit(url).path).get_data(as_text=True)
