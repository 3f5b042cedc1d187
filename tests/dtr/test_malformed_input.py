"""DTR bodies whose elements have the wrong JSON shape (a string where a Reference goes,
a number where a list goes) are a 400 OperationOutcome naming the element, never a 500;
and the documentation app treats an EHR order of the same kind as naming no patient."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service import smart_form
from cds_service.settings import app_settings
from coverage_policy.loader import load_policy
from tests.conftest import FIXTURES, make_app
from tests.dtr.loop import coverage_of, orders_of

BODY = json.loads(
    (FIXTURES / "requests" / "order-sign__eip-csii-insulin-lispro__conditional.json").read_text()
)
PACKAGE = "/fhir/Questionnaire/$questionnaire-package"
NEXT = "/fhir/Questionnaire/$next-question"
LOG = "/fhir/Questionnaire/$log-questionnaire-errors"


@pytest.fixture
def client() -> FlaskClient:
    return make_app().test_client()


def _package_body(coverage: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "coverage", "resource": coverage},
            *({"name": "order", "resource": o} for o in orders_of(BODY)),
        ],
    }


def _draft(client: FlaskClient) -> dict[str, Any]:
    """The draft QuestionnaireResponse a package of the fixture's orders carries."""
    answer = client.post(PACKAGE, json=_package_body(coverage_of(BODY)))
    assert answer.status_code == 200, answer.get_json()
    return dict(answer.get_json()["parameter"][0]["resource"]["entry"][-1]["resource"])


def _assert_400(answer: Any, expression: str) -> None:
    assert answer.status_code == 400, answer.get_data(as_text=True)
    outcome = answer.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [expression] in [issue.get("expression") for issue in outcome["issue"]]


@pytest.mark.parametrize("beneficiary", ["Patient/x", 5, ["Patient/x"], {"reference": 5}], ids=repr)
def test_a_coverage_whose_beneficiary_is_not_a_reference(
    client: FlaskClient, beneficiary: Any
) -> None:
    coverage = {**coverage_of(BODY), "beneficiary": beneficiary}
    _assert_400(
        client.post(PACKAGE, json=_package_body(coverage)),
        "Parameters.parameter[0].resource.beneficiary",
    )


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``path`` ("a.0.b") in the response to ``value``."""

    def change(response: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = response
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("path", "value", "expression"),
    [
        ("extension", 5, "QuestionnaireResponse.extension"),
        ("extension", {"url": "x"}, "QuestionnaireResponse.extension"),
        ("contained", 5, "QuestionnaireResponse.contained"),
        ("contained", {"resourceType": "Questionnaire"}, "QuestionnaireResponse.contained"),
        ("contained.0.derivedFrom", 5, "QuestionnaireResponse.contained[0].derivedFrom"),
        ("contained.0.derivedFrom", "x", "QuestionnaireResponse.contained[0].derivedFrom"),
        ("contained.0.item", 5, "QuestionnaireResponse.contained[0].item"),
        ("contained.0.item", {"linkId": "x"}, "QuestionnaireResponse.contained[0].item"),
        ("contained.0.extension", 5, "QuestionnaireResponse.contained[0].extension"),
        ("contained.0.item", [5], "QuestionnaireResponse.contained[0].item[0]"),
        ("contained.0.item", [{"linkId": ["x"]}], "QuestionnaireResponse.contained[0].item[0]"),
        ("contained.0.item", [{"linkId": {}}], "QuestionnaireResponse.contained[0].item[0]"),
        ("item", 5, "QuestionnaireResponse.item"),
        ("item", [{"linkId": "x", "answer": 5}], "QuestionnaireResponse.item[0].answer"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
@pytest.mark.parametrize("wrapped", [True, False], ids=["parameters", "bare"])
def test_a_response_with_a_list_element_that_is_not_a_list(
    client: FlaskClient, path: str, value: Any, expression: str, wrapped: bool
) -> None:
    response = copy.deepcopy(_draft(client))
    _set(path, value)(response)
    body = (
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "questionnaire-response", "resource": response}],
        }
        if wrapped
        else response
    )
    _assert_400(client.post(NEXT, json=body), expression)


@pytest.mark.parametrize("issue", [5, "bad", {"severity": "error"}], ids=repr)
def test_logged_errors_whose_issue_is_not_a_list(client: FlaskClient, issue: Any) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire", "valueCanonical": "http://x/Questionnaire/q|1"},
            {"name": "outcome", "resource": {"resourceType": "OperationOutcome", "issue": issue}},
        ],
    }
    _assert_400(client.post(LOG, json=body), "Parameters.parameter[1].resource.issue")


class _Reader:
    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource

    def fetch(self, reference: str) -> dict[str, Any]:
        return self.resource


@pytest.mark.parametrize("subject", ["Patient/x", 5, ["Patient/x"], {"reference": 5}], ids=repr)
def test_an_ehr_order_whose_subject_is_not_a_reference_names_no_patient(
    monkeypatch: pytest.MonkeyPatch, subject: Any
) -> None:
    order = {**orders_of(BODY)[0], "subject": subject}
    reference = f"{order['resourceType']}/{order['id']}"
    monkeypatch.setattr(smart_form, "_reader", lambda *_: _Reader(order))
    app = make_app({"FHIR_SERVERS": ["http://127.0.0.1"]})
    context = smart_form.LaunchContext(
        patient=None, orders=(reference,), coverage=None, assertion_id=None, fhir_user=None
    )
    data = {"iss": "http://127.0.0.1/fhir", "access_token": "t"}
    with pytest.raises(smart_form.FormUnavailable) as raised:
        smart_form.open_form(
            load_policy(),
            app_settings(app),
            app.extensions["cds_store"],
            data,
            context,
            date(2026, 11, 28),
        )
    assert (raised.value.status, raised.value.title) == (400, "No patient")
