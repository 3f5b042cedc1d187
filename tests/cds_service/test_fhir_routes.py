"""The FHIR endpoint serving the documentation Questionnaire, and that what responses
point at (the documentation card's link, the CRD ``questionnaire`` canonical) resolves."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient

from cds_service.fhir_routes import FHIR_JSON
from coverage_policy.loader import load_policy
from coverage_policy.model import RuleKind
from hooks.coverage_information import EXTENSION_URL
from hooks.questionnaire import documentation_questionnaire
from tests.builders import (
    PAYER,
    PUMP_ORDERS,
    coverage,
    order_sign_request,
    pump_order_resources,
    searchset,
)
from tests.conftest import ORDER_SIGN

QUESTIONNAIRE = "/fhir/Questionnaire"


@pytest.fixture
def canonical(app: Flask) -> tuple[str, str]:
    """(url, version) of the policy's documentation Questionnaire."""
    url, _, version = app.extensions["cds_policy"].questionnaire_url.partition("|")
    return url, version


@pytest.fixture
def conditional_response(client: FlaskClient) -> dict[str, Any]:
    """The response to an external insulin pump order for a patient whose record is
    empty: conditional on documentation, so it carries a documentation card and asks
    for the Questionnaire in the coverage-information extension."""
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    empty_keys = (
        "conditions",
        "medicationRequests",
        "observations",
        "allergies",
        "devices",
        "encounters",
        "procedures",
        "questionnaireResponses",
    )
    prefetch = {
        "patient": patient,
        "coverage": searchset(coverage("p1")),
        **{key: searchset() for key in empty_keys},
    }
    orders = pump_order_resources(PUMP_ORDERS[0], "p1")
    body = order_sign_request("p1", orders, prefetch, "8c6f4b1e-52d4-4b6a-9a43-0d5e3c1b7f21")
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def _fhir(client: FlaskClient, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    response = client.get(path, query_string=params)
    assert response.mimetype == FHIR_JSON
    body = response.get_json(force=True)
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return response.status_code, body


def test_read_serves_the_generated_questionnaire(app: Flask, client: FlaskClient) -> None:
    policy = app.extensions["cds_policy"]
    status, body = _fhir(client, f"{QUESTIONNAIRE}/{policy.questionnaire_id}")
    assert status == 200
    assert body == documentation_questionnaire(policy, publisher=PAYER)


def test_read_of_unknown_id_is_404_operation_outcome(client: FlaskClient) -> None:
    status, body = _fhir(client, f"{QUESTIONNAIRE}/no-such-questionnaire")
    assert status == 404
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"
    assert "no-such-questionnaire" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("with_version", [False, True])
def test_search_by_canonical_finds_it(
    client: FlaskClient, canonical: tuple[str, str], with_version: bool
) -> None:
    url, version = canonical
    wanted = f"{url}|{version}" if with_version else url
    status, bundle = _fhir(client, QUESTIONNAIRE, url=wanted)
    assert status == 200
    assert (bundle["type"], bundle["total"]) == ("searchset", 1)
    (entry,) = bundle["entry"]
    assert entry["resource"]["url"] == url
    assert entry["search"] == {"mode": "match"}
    assert entry["fullUrl"] == f"http://localhost{QUESTIONNAIRE}/{entry['resource']['id']}"
    assert bundle["link"][0]["relation"] == "self"


@pytest.mark.parametrize(
    "params",
    [
        {"url": "http://example.org/fhir/Questionnaire/other"},
        {"url": "{url}|0.0.0"},
        {"_id": "other"},
    ],
)
def test_search_without_match_is_an_empty_bundle(
    client: FlaskClient, canonical: tuple[str, str], params: dict[str, str]
) -> None:
    query = {key: value.format(url=canonical[0]) for key, value in params.items()}
    status, bundle = _fhir(client, QUESTIONNAIRE, **query)
    assert status == 200
    assert (bundle["type"], bundle["total"]) == ("searchset", 0)
    assert "entry" not in bundle


def test_search_without_parameters_lists_every_form(client: FlaskClient) -> None:
    """The whole-policy form first, then one adaptive DTR form per indication rule."""
    status, bundle = _fhir(client, QUESTIONNAIRE)
    policy = load_policy()
    rules = [r for r in policy.rules if r.kind is RuleKind.INDICATION]
    assert (status, bundle["total"]) == (200, 1 + len(rules))
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert ids[0] == policy.questionnaire_id
    assert ids[1:] == [f"{policy.questionnaire_id}-{r.id.lower()}" for r in rules]


def test_crd_questionnaire_canonical_resolves(
    client: FlaskClient, conditional_response: dict[str, Any]
) -> None:
    """The canonical in a real response's coverage-information finds the Questionnaire."""
    canonicals = set()
    for action in conditional_response["systemActions"]:
        for extension in action["resource"]["extension"]:
            if extension["url"] == EXTENSION_URL:
                canonicals |= {
                    p["valueCanonical"]
                    for p in extension["extension"]
                    if p["url"] == "questionnaire"
                }
    (canonical,) = canonicals
    status, bundle = _fhir(client, QUESTIONNAIRE, url=canonical)
    assert (status, bundle["total"]) == (200, 1)
    questionnaire = bundle["entry"][0]["resource"]
    assert f"{questionnaire['url']}|{questionnaire['version']}" == canonical


def test_documentation_card_link_resolves(
    app: Flask, client: FlaskClient, conditional_response: dict[str, Any]
) -> None:
    """The documentation card's link GETs the Questionnaire, whose items cover what the
    card and the CRD extension ask for."""
    cards = [c for c in conditional_response["cards"] if c["source"]["topic"]["code"] == "claim"]
    (card,) = cards
    links = re.findall(r"https?://\S+/fhir/Questionnaire/[A-Za-z0-9.-]+", card["detail"])
    (link,) = links
    status, questionnaire = _fhir(client, urlsplit(link).path)
    assert status == 200
    assert questionnaire["resourceType"] == "Questionnaire"
    policy = app.extensions["cds_policy"]
    asked = {
        item
        for criterion in policy.criteria.values()
        if f"- {criterion.text}" in card["detail"]
        for item in criterion.documentation
    }
    assert asked
    assert asked <= {item["linkId"] for item in questionnaire["item"]}
