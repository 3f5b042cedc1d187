"""The documentation app's form over HTTP, without a browser, for every rule that can be
conditional: sign → conditional → launch → consent → the form asks only what is open →
answers saved to the EHR's FHIR server (Medplum behind the test SMART authorization
server) → the app's new decision → order-sign again, with the saved response found on the
FHIR server, gives the same outcome."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from cds_service import create_app
from cds_service.audit import audit_for_assertion
from cds_service.fhir_client import close_shared_session
from coverage_policy.loader import load_policy
from coverage_policy.model import DocumentationItem
from dtr.forms import form_text
from tests.conftest import FIXTURES, ORDER_SIGN
from tests.documentation_app import (
    CLIENT_ID,
    Ehr,
    coverage_of_response,
    favourable,
    isolate,
    launch_context,
    orders,
    place,
    running_ehr,
    unfavourable,
)
from tests.dtr import conformance
from tests.dtr.loop import COVERAGE_INFORMATION, part

REQUESTS = FIXTURES / "requests"
POLICY = load_policy()
CONDITIONAL = sorted(
    p for p in REQUESTS.glob("order-sign__*__conditional.json") if "no-coverage" not in p.name
)
_OPEN = re.compile(r'<fieldset id="item-([^"]+)" class="open">')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def ehr() -> Iterator[Ehr]:
    with running_ehr("http://localhost/dtr/callback") as running:
        yield running
    close_shared_session()


def _service(ehr: Ehr, today: date) -> Flask:
    """The service as its documentation app is configured, on the order's day."""
    noon = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
    return create_app(
        {
            "DATABASE_URL": "sqlite://",
            "AUTH": "optional",
            "FHIR_SERVERS": ["http://127.0.0.1"],
            "SMART_CLIENTS": {ehr.auth.iss: {"client_id": CLIENT_ID}},
            "PUBLIC_URL": "http://localhost",
        },
        clock=lambda: noon,
    )


def _order_day(body: dict[str, Any]) -> date:
    return min(date.fromisoformat(o["authoredOn"][:10]) for o in orders(body) if "authoredOn" in o)


def _launch(browser: FlaskClient, ehr: Ehr, context: dict[str, Any]) -> None:
    launch = ehr.auth.new_launch(context)
    url = urlsplit(ehr.auth.launch_url("http://localhost", launch))
    answer = browser.get(f"{url.path}?{url.query}")
    assert answer.status_code == 302, answer.data
    query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    consent = requests.post(
        f"{ehr.auth.base}/authorize",
        params=query,
        data={"decision": "allow"},
        allow_redirects=False,
    )
    callback = {k: v[0] for k, v in parse_qs(urlsplit(consent.headers["Location"]).query).items()}
    answer = browser.get("/dtr/callback", query_string=callback)
    assert answer.status_code == 303, answer.data


def _fill(
    browser: FlaskClient, choose: Callable[[DocumentationItem, date], str], today: date
) -> tuple[str, list[str]]:
    """Answer what the form asks, saving as it goes, until nothing is open; finish.
    The decision page and the questions asked."""
    given: dict[str, str] = {}
    asked: list[str] = []
    for _ in range(20):
        html = browser.get("/dtr/form").get_data(as_text=True)
        open_ids = _OPEN.findall(html)
        if not open_ids:
            break
        assert not set(open_ids) & set(asked), "a question answered is asked again"
        for link_id in open_ids:
            asked.append(link_id)
            given[f"q-{link_id}"] = choose(POLICY.documentation[link_id], today)
        csrf = _CSRF.search(html)
        assert csrf
        saved = browser.post("/dtr/form", data={**given, "csrf": csrf.group(1), "action": "save"})
        assert saved.status_code == 303, saved.get_data(as_text=True)
    html = browser.get("/dtr/form").get_data(as_text=True)
    csrf = _CSRF.search(html)
    assert csrf
    finished = browser.post("/dtr/form", data={**given, "csrf": csrf.group(1), "action": "finish"})
    assert finished.status_code == 303, finished.get_data(as_text=True)
    assert finished.headers["Location"] == "/dtr/done"
    return browser.get("/dtr/done").get_data(as_text=True), asked


def _saved_responses(ehr: Ehr, patient: str) -> dict[str, Any]:
    return ehr.fhir.get(f"{ehr.fhir.base}/QuestionnaireResponse?patient={patient}")


@pytest.mark.parametrize("path", CONDITIONAL, ids=lambda p: p.name.split("__")[1])
@pytest.mark.parametrize("choose", [favourable, unfavourable], ids=["favourable", "unfavourable"])
@pytest.mark.parametrize("order_on_server", [True, False], ids=["order-read", "draft-order"])
def test_the_form_decides_as_order_sign_does_on_the_saved_answers(
    ehr: Ehr,
    path: Path,
    choose: Callable[[DocumentationItem, date], str],
    order_on_server: bool,
) -> None:
    case = hashlib.sha1(path.name.encode()).hexdigest()[:8]
    prefix = f"{case}-{choose.__name__[:3]}-{int(order_on_server)}"
    body = isolate(json.loads(path.read_text(encoding="utf-8")), prefix)
    today = _order_day(body)
    app = _service(ehr, today)
    service = app.test_client()
    signed = service.post(ORDER_SIGN, json=body)
    assert signed.status_code == 200
    covered, assertion_id = coverage_of_response(signed.get_json())
    assert covered == "conditional"
    assert assertion_id
    place(ehr, body, with_orders=order_on_server)
    browser = app.test_client()
    _launch(browser, ehr, launch_context(body, assertion_id))
    first = browser.get("/dtr/form").get_data(as_text=True)
    assert ("not on the EHR" in first) is (not order_on_server)
    done, asked = _fill(browser, choose, today)
    outcome = re.search(r'id="outcome">Decision: ([a-z ]+)<', done)
    assert outcome, done
    if path.name == "order-sign__eip-csii-insulin-lispro__conditional.json":
        expected = "covered" if choose is favourable else "not covered"
        assert outcome.group(1) == expected
    patient = body["context"]["patientId"]
    bundle = _saved_responses(ehr, patient)
    saved = [
        e["resource"]
        for e in bundle.get("entry") or []
        if e["resource"].get("author") == {"reference": "Practitioner/dr-doc"}
    ]
    assert len(saved) == 1  # saved as it went, then completed: one resource
    response = saved[0]
    assert response["status"] == "completed"
    assert conformance.questionnaire_response(response, completed=bool(asked)) == []
    assert response["subject"] == {"reference": f"Patient/{patient}"}
    assert response["author"] == {"reference": "Practitioner/dr-doc"}
    asserted = [e for e in response.get("extension") or [] if e["url"] == COVERAGE_INFORMATION]
    if path.name == "order-sign__eip-csii-insulin-lispro__conditional.json":
        assert asserted  # the form completes the CRD decision it was launched for
    if asserted:  # a completed CRD decision: recorded under its new coverage-assertion-id
        new_id = part(asserted[0], "coverage-assertion-id")
        assert new_id != assertion_id
        with app.app_context():
            recorded = audit_for_assertion(app.extensions["cds_store"], new_id)
        assert [r["outcome"] for r in recorded] == [part(asserted[0], "covered")]
    for item in response.get("item") or []:
        origin = item["answer"][0]["extension"][0]
        assert origin["url"].endswith("/information-origin")
        assert {"url": "source", "valueCode": "manual"} in origin["extension"]
    # Signing again: order-sign reads the saved response from the questionnaireResponses
    # prefetch (as the EHR's FHIR server answers that query) and decides the same.
    again = {**body, "hookInstance": str(uuid.uuid4())}
    again["prefetch"] = {**body["prefetch"], "questionnaireResponses": bundle}
    resigned = service.post(ORDER_SIGN, json=again)
    assert resigned.status_code == 200
    covered_again, _ = coverage_of_response(resigned.get_json())
    if 'id="undecided"' not in done:  # the app asserted a decision of its own
        assert covered_again == outcome.group(1).replace(" ", "-")


def _opened(ehr: Ehr, prefix: str) -> tuple[Flask, FlaskClient, dict[str, Any], str]:
    """A conditional order signed and placed on the FHIR server, the app launched on it
    and its form shown; the service, the browser, the request and the form's page."""
    path = REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    body = isolate(json.loads(path.read_text(encoding="utf-8")), prefix)
    app = _service(ehr, _order_day(body))
    signed = app.test_client().post(ORDER_SIGN, json=body)
    _, assertion_id = coverage_of_response(signed.get_json())
    place(ehr, body, with_orders=True)
    browser = app.test_client()
    _launch(browser, ehr, launch_context(body, assertion_id))
    html = browser.get("/dtr/form").get_data(as_text=True)
    return app, browser, body, html


def _ours(ehr: Ehr, body: dict[str, Any]) -> list[dict[str, Any]]:
    bundle = _saved_responses(ehr, body["context"]["patientId"])
    return [
        e["resource"]
        for e in bundle.get("entry") or []
        if e["resource"].get("author") == {"reference": "Practitioner/dr-doc"}
    ]


def test_nothing_is_written_until_save_and_a_post_without_its_csrf_token_is_refused(
    ehr: Ehr,
) -> None:
    _, browser, body, html = _opened(ehr, "csrf")
    assert _OPEN.findall(html)
    assert _ours(ehr, body) == []  # the form is shown; nothing written yet
    link_id = _OPEN.findall(html)[0]
    refused = browser.post("/dtr/form", data={f"q-{link_id}": "yes", "action": "save"})
    assert refused.status_code == 403
    assert refused.mimetype == "text/html"
    forged = browser.post(
        "/dtr/form", data={f"q-{link_id}": "yes", "action": "save", "csrf": "x" * 43}
    )
    assert forged.status_code == 403
    assert _ours(ehr, body) == []


def test_an_answer_of_the_wrong_kind_is_shown_back_and_not_saved(ehr: Ehr) -> None:
    _, browser, body, html = _opened(ehr, "wrongkind")
    csrf = _CSRF.search(html)
    assert csrf
    link_id = _OPEN.findall(html)[0]
    answer = browser.post(
        "/dtr/form", data={f"q-{link_id}": "maybe", "action": "save", "csrf": csrf.group(1)}
    )
    assert answer.status_code == 400
    assert 'id="errors"' in answer.get_data(as_text=True)
    assert _ours(ehr, body) == []


def test_a_fhir_server_that_refuses_the_save_keeps_the_answers_in_the_session(ehr: Ehr) -> None:
    app, browser, body, html = _opened(ehr, "refused")
    csrf = _CSRF.search(html)
    assert csrf
    link_id = _OPEN.findall(html)[0]
    ehr.auth.tokens.clear()  # the EHR revoked the user's token
    answer = browser.post(
        "/dtr/form", data={f"q-{link_id}": "yes", "action": "save", "csrf": csrf.group(1)}
    )
    assert answer.status_code == 502
    text = answer.get_data(as_text=True)
    assert "not saved to the chart" in text
    assert "refused access" in text
    assert _ours(ehr, body) == []
    again = browser.get("/dtr/form").get_data(as_text=True)
    assert f'id="item-{link_id}" class="answered"' in again  # kept for the next Save


def test_without_a_session_the_form_is_an_expired_session_page(ehr: Ehr) -> None:
    app, _, _, _ = _opened(ehr, "nosession")
    answer = app.test_client().get("/dtr/form")
    assert answer.status_code == 401
    assert "Open the documentation app again" in answer.get_data(as_text=True)


def test_an_order_that_cannot_be_read_without_a_decision_to_work_from(ehr: Ehr) -> None:
    app = _service(ehr, date(2026, 11, 28))
    browser = app.test_client()
    _launch(
        browser,
        ehr,
        {"patient": "no-such-patient", "fhirContext": ["DeviceRequest/no-such-order"]},
    )
    answer = browser.get("/dtr/form")
    assert answer.status_code == 502
    assert "could not be read" in answer.get_data(as_text=True)


def test_a_criterion_the_signing_could_not_check_is_shown_as_not_checked(ehr: Ehr) -> None:
    """Signed while the EHR could not send the medication orders (not in the prefetch, and
    its FHIR server not answering), the draft order not on the server: the form works from
    that decision, does not ask about the criterion reading them, and its done page shows
    it as not checked, in the decision page's words, not as something still to document."""
    path = REQUESTS / "order-sign__eip-csii-insulin-lispro__conditional.json"
    body = isolate(json.loads(path.read_text(encoding="utf-8")), "notchecked")
    del body["prefetch"]["medicationRequests"]
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens there
    body["fhirAuthorization"] = {
        "access_token": "unused",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    today = _order_day(body)
    app = _service(ehr, today)
    signed = app.test_client().post(ORDER_SIGN, json=body)
    assert signed.status_code == 200
    covered, assertion_id = coverage_of_response(signed.get_json())
    assert covered == "conditional"
    place(ehr, body, with_orders=False)
    browser = app.test_client()
    _launch(browser, ehr, launch_context(body, assertion_id))
    done, asked = _fill(browser, favourable, today)
    criterion = POLICY.criteria["EIP-CSII-MDI"]
    assert criterion.documentation
    assert not set(criterion.documentation) & set(asked)  # documenting cannot settle it
    text = str(escape(criterion.text))
    assert f"<li>{text}: <strong>not checked: its data could not be retrieved</strong></li>" in done


_PAGE_KEY = re.compile(r'error_page\(\s*"([a-z_]+)"')


def test_every_error_page_the_app_raises_has_its_words_and_every_one_is_raised() -> None:
    """The keys ``smart_app`` and ``smart_form`` name are those of ``form_text.json``'s
    ``app.errors``, each with a title and a message."""
    import cds_service.smart_app
    import cds_service.smart_form

    sources = [Path(m.__file__ or "") for m in (cds_service.smart_app, cds_service.smart_form)]
    raised = {key for p in sources for key in _PAGE_KEY.findall(p.read_text(encoding="utf-8"))}
    errors = form_text()["app"]["errors"]
    assert raised == set(errors)
    assert all(entry["title"] and entry["message"] for entry in errors.values())
