"""The documentation loop through the service, as a DTR client drives it.

For every conditional order-sign fixture whose decision asks for documentation: the
package of its context holds the form of its rule; ``$next-question`` asks until the
response is completed; the completed response carries coverage-information with a new
assertion id; and the same answers sent later in ``questionnaireResponses`` give
order-sign the same outcome (one engine, one set of facts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.audit import audit_for_assertion
from tests.conftest import FIXTURES, make_app
from tests.dtr import conformance
from tests.dtr.loop import (
    COVERAGE_INFORMATION,
    coverage_extensions,
    coverage_of,
    favourable,
    next_question,
    orders_of,
    package,
    part,
    sign,
    unfavourable,
    walk,
    with_response,
)

REQUESTS = FIXTURES / "requests"
CONDITIONAL = sorted(
    p for p in REQUESTS.glob("order-sign__*__conditional.json") if "no-coverage" not in p.name
)

# The forms that end without an assertion: the pump kind picks another rule, whose
# criteria the first decision never looked at.
UNDECIDABLE_BY_FORM = {
    "order-sign__insulin-pump-kind-unknown__conditional.json",
    "order-sign__scope-pump-kind-morphine-infusion__conditional.json",
}


def _asks_documentation(extension: dict[str, Any]) -> bool:
    return part(extension, "questionnaire") is not None


@pytest.fixture
def client() -> FlaskClient:
    return make_app().test_client()


def _signed(client: FlaskClient, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.loads(path.read_text())
    response = sign(client, body)
    return body, coverage_extensions(response)[0] if coverage_extensions(response) else {}


@pytest.mark.parametrize("path", CONDITIONAL, ids=lambda p: p.name.split("__")[1])
@pytest.mark.parametrize("answer", [favourable, unfavourable], ids=["favourable", "unfavourable"])
def test_answers_reach_the_outcome_order_sign_gives_them(
    client: FlaskClient, path: Path, answer: Any
) -> None:
    body, extension = _signed(client, path)
    if not extension or not _asks_documentation(extension):
        pytest.skip("this decision asks for no form")
    context = part(extension, "coverage-assertion-id")
    reply = package(client, body, context)
    assert reply.status_code == 200, reply.get_json()
    assert conformance.package_parameters(reply.get_json()) == []
    bundles = [p["resource"] for p in reply.get_json()["parameter"] if p["name"] == "PackageBundle"]
    assert len(bundles) == 1
    form, *_, draft = [e["resource"] for e in bundles[0]["entry"]]
    assert f"{form['url']}|{form['version']}" == part(extension, "questionnaire")
    assert draft["resourceType"] == "QuestionnaireResponse"
    completed, asked = walk(client, draft, answer)
    assert conformance.questionnaire_response(completed, completed=True) == []
    assert asked, "a conditional decision asks something"
    assert len(asked) == len(set(asked))
    information = [e for e in completed["extension"] if e["url"] == COVERAGE_INFORMATION]
    again = sign(client, with_response(body, completed))
    if not information:
        # The form could not decide: an answer moved the order to another rule. Signing
        # again decides it, on the answers.
        assert path.name in UNDECIDABLE_BY_FORM, path.name
        assert coverage_extensions(again)
        return
    assert len(information) == 1
    assert part(information[0], "coverage-assertion-id") != context
    assert {part(e, "covered") for e in coverage_extensions(again)} == {
        part(information[0], "covered")
    }


def test_a_context_is_honoured_only_with_its_order(client: FlaskClient) -> None:
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    context = part(extension, "coverage-assertion-id")
    for order in body["context"]["draftOrders"]["entry"]:
        order["resource"]["id"] = "someone-elses-order"
    reply = package(client, body, context)
    assert reply.status_code == 400
    assert "honoured only together with an order" in reply.get_json()["issue"][0]["diagnostics"]
    guessed = package(
        client,
        json.loads(
            (REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json").read_text()
        ),
        "00000000-0000-4000-8000-999999999999",
    )
    assert guessed.status_code == 400
    assert (
        guessed.get_json()["issue"][0]["diagnostics"] == reply.get_json()["issue"][0]["diagnostics"]
    )


def test_a_decided_context_says_no_more_documentation_is_needed(client: FlaskClient) -> None:
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__covered.json"
    )
    reply = package(client, body, part(extension, "coverage-assertion-id"))
    assert reply.status_code == 200
    parameters = reply.get_json()["parameter"]
    assert [p["name"] for p in parameters] == ["outcome"]
    assert "No more documentation is needed" in parameters[0]["resource"]["issue"][0]["diagnostics"]


def test_a_form_without_context_never_asserts_coverage(client: FlaskClient) -> None:
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    canonical = part(extension, "questionnaire")
    reply = package(client, body, None, questionnaires=[canonical])
    assert reply.status_code == 200, reply.get_json()
    draft = reply.get_json()["parameter"][0]["resource"]["entry"][-1]["resource"]
    completed, asked = walk(client, draft, favourable)
    assert "face-to-face-within-6-months" in asked  # nothing is known of the order
    assert not [e for e in completed.get("extension") or [] if e["url"] == COVERAGE_INFORMATION]


@pytest.mark.parametrize(
    ("change", "diagnostics"),
    [
        (lambda qr: qr.update(questionnaire="#elsewhere"), "contained adaptive Questionnaire"),
        (
            lambda qr: qr.setdefault("item", []).append(
                {"linkId": "csii-mdi-6-months", "answer": [{"valueBoolean": True}]}
            ),
            "not a question this form asked",
        ),
        (
            lambda qr: qr.setdefault("item", []).append(
                {"linkId": "no-such-item", "answer": [{"valueBoolean": True}]}
            ),
            "not a question this form asked",
        ),
    ],
)
def test_a_response_that_does_not_match_its_form_is_a_400(
    client: FlaskClient, change: Any, diagnostics: str
) -> None:
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    draft = package(client, body, part(extension, "coverage-assertion-id")).get_json()["parameter"][
        0
    ]["resource"]["entry"][-1]["resource"]
    change(draft)
    reply = next_question(client, draft)
    assert reply.status_code == 400
    assert diagnostics in json.dumps(reply.get_json())


def test_an_answer_of_the_wrong_type_is_a_400_naming_where(client: FlaskClient) -> None:
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    draft = package(client, body, part(extension, "coverage-assertion-id")).get_json()["parameter"][
        0
    ]["resource"]["entry"][-1]["resource"]
    asked = next_question(client, draft).get_json()["parameter"][0]["resource"]
    first = asked["contained"][0]["item"][0]
    asked["item"] = [{"linkId": first["linkId"], "answer": [{"valueString": "yes"}]}]
    reply = next_question(client, asked)
    assert reply.status_code == 400
    issue = reply.get_json()["issue"][0]
    assert "needs a valueBoolean" in issue["diagnostics"]
    assert issue["expression"] == ["QuestionnaireResponse.item[0].answer[0]"]


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle"},
        {"resourceType": "Parameters"},
        {"resourceType": "Parameters", "parameter": [{"name": "context", "valueString": "x"}]},
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "coverage", "resource": {"resourceType": "Coverage", "id": "c"}}
            ],
        },
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "coverage", "resource": {"resourceType": "Patient"}}],
        },
    ],
)
def test_a_package_request_that_is_not_one_is_a_400(client: FlaskClient, body: Any) -> None:
    reply = client.post("/fhir/Questionnaire/$questionnaire-package", json=body)
    assert reply.status_code == 400
    assert reply.get_json()["resourceType"] == "OperationOutcome"


def test_every_bound_valueset_expands(client: FlaskClient) -> None:
    forms = client.get("/fhir/Questionnaire").get_json()
    assert forms["total"] > 20
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    bundle = package(client, body, part(extension, "coverage-assertion-id")).get_json()[
        "parameter"
    ][0]["resource"]
    valuesets = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ValueSet"
    ]
    assert valuesets
    for valueset in valuesets:
        reply = client.get(
            "/fhir/ValueSet/$expand",
            query_string={"url": f"{valueset['url']}|{valueset['version']}"},
        )
        assert reply.status_code == 200
        assert reply.get_json()["expansion"]["contains"]
    assert (
        client.get(
            "/fhir/ValueSet/$expand", query_string={"url": "http://x/ValueSet/none"}
        ).status_code
        == 400
    )


def test_metadata_lists_the_operations(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    operations = {o["name"] for o in statement["rest"][0]["resource"][0]["operation"]}
    assert operations == {"questionnaire-package", "next-question", "log-questionnaire-errors"}


def test_logged_questionnaire_errors_are_accepted(client: FlaskClient) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire", "valueCanonical": "http://x/Questionnaire/q|1"},
            {
                "name": "outcome",
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "processing", "diagnostics": "bad"}],
                },
            },
        ],
    }
    assert (
        client.post("/fhir/Questionnaire/$log-questionnaire-errors", json=body).status_code == 200
    )
    body["parameter"] = body["parameter"][:1]
    assert (
        client.post("/fhir/Questionnaire/$log-questionnaire-errors", json=body).status_code == 400
    )


def test_a_completed_form_is_audited_under_its_new_assertion_id() -> None:
    app = make_app()
    client = app.test_client()
    body, extension = _signed(
        client, REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    )
    reply = package(client, body, part(extension, "coverage-assertion-id"))
    draft = reply.get_json()["parameter"][0]["resource"]["entry"][-1]["resource"]
    completed, _ = walk(client, draft, favourable)
    information = next(e for e in completed["extension"] if e["url"] == COVERAGE_INFORMATION)
    new_id = part(information, "coverage-assertion-id")
    recorded = audit_for_assertion(app.extensions["cds_store"], new_id)
    assert [(r["service_id"], r["hook"], r["outcome"]) for r in recorded] == [
        ("dtr", "next-question", "covered")
    ]
    assert set(recorded[0]["orders"]) == {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body["context"]["draftOrders"]["entry"]
    }
    # The new id is a context a later form can name: the order is decided now.
    again = package(client, body, new_id)
    assert again.status_code == 200
    assert [p["name"] for p in again.get_json()["parameter"]] == ["outcome"]


def test_resources_sent_with_the_order_are_what_the_form_knows(client: FlaskClient) -> None:
    """Without a context, the order and the resources sent as ``referenced`` decide which
    questions are open: sent the whole prefetch, a form asks what the CRD context's
    form asks, and never asserts coverage."""
    path = REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    body, extension = _signed(client, path)
    with_context = package(client, body, part(extension, "coverage-assertion-id")).get_json()
    first_draft = with_context["parameter"][0]["resource"]["entry"][-1]["resource"]
    _, asked_with_context = walk(client, first_draft, favourable)
    referenced = [
        entry["resource"]
        for key, bundle in body["prefetch"].items()
        if key != "coverage" and isinstance(bundle, dict)
        for entry in bundle.get("entry") or []
        if entry["resource"]["resourceType"] != "Patient"
    ]
    reply = package(client, body, None, referenced=referenced)
    assert reply.status_code == 200, reply.get_json()
    draft = reply.get_json()["parameter"][0]["resource"]["entry"][-1]["resource"]
    completed, asked = walk(client, draft, favourable)
    assert asked == asked_with_context
    assert not [e for e in completed["extension"] if e["url"] == COVERAGE_INFORMATION]


@pytest.mark.parametrize("operation", ["$next-question", "$questionnaire-package"])
def test_an_operation_read_with_get_is_a_405_not_a_missing_questionnaire(
    client: FlaskClient, operation: str
) -> None:
    reply = client.get(f"/fhir/Questionnaire/{operation}")
    assert reply.status_code == 405
    assert reply.headers["Allow"] == "POST"
    assert reply.get_json()["issue"][0]["code"] == "not-supported"


class _ClearedAfterLookup(dict[str, Any]):
    """A forms cache that another request clears right after this one found its base URL
    in it."""

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self.clear()
        return found


def test_forms_are_served_while_another_request_clears_their_cache() -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/fhir/Questionnaire").status_code == 200
    app.extensions["cds_dtr_forms"] = _ClearedAfterLookup(app.extensions["cds_dtr_forms"])
    reply = client.get("/fhir/Questionnaire")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.get_json()["total"] > 20


def test_a_package_asked_for_forms_changed_since_a_time_is_the_whole_package(
    client: FlaskClient,
) -> None:
    """DTR allows 'changedsince'; the forms are generated each time, so all are sent."""
    body = json.loads(
        (REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json").read_text()
    )
    whole = package(client, body, None).get_json()
    asked = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "coverage", "resource": coverage_of(body)},
            *({"name": "order", "resource": o} for o in orders_of(body)),
            {"name": "changedsince", "valueDateTime": "2026-01-01T00:00:00Z"},
        ],
    }
    reply = client.post("/fhir/Questionnaire/$questionnaire-package", json=asked)
    assert reply.status_code == 200, reply.get_json()
    forms = [b["resource"]["entry"][0]["resource"]["url"] for b in reply.get_json()["parameter"]]
    assert forms
    assert forms == [b["resource"]["entry"][0]["resource"]["url"] for b in whole["parameter"]]
