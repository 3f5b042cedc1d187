"""The documentation app in headless Chromium (Debian ``chromium``, driven by Playwright),
served by ``infusion-pump-cds serve``, launched from the test SMART authorization server in
front of Medplum: sign → conditional → the card's app link → launch → consent → the form
→ answers with the keyboard alone → save → the QuestionnaireResponse on the FHIR server →
the new decision → order-sign again. Plus the deny paths, in the browser.

A screenshot of each form is kept under ``test-artifacts/`` (not committed), and the
times from launch to the form and from finish to the decision are printed."""

from __future__ import annotations

import copy
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import requests

from cds_service.fhir_load import assign_ids, load_resources, read_resources, service_reads
from cds_service.try_as_ehr import OrderSpec, TryRequest, draft_orders, hook_request_body
from coverage_policy.loader import load_policy
from demo.data import medicare_advantage_coverage
from tests.conftest import FIXTURES, ORDER_SIGN, ROOT, SHARED
from tests.demo.test_try_page import CHROMIUM_FLAGS, chromium_or_skip
from tests.documentation_app import (
    CLIENT_ID,
    Ehr,
    coverage_of_response,
    isolate,
    launch_context,
    place,
    running_ehr,
)
from tests.documentation_app import favourable as favourable_field
from tests.documentation_app import unfavourable as unfavourable_field
from tests.served_process import ServedProcess, free_port

REQUESTS = FIXTURES / "requests"
ARTIFACTS = ROOT / "test-artifacts"
POLICY = load_policy()
TIMINGS: dict[str, list[float]] = {"launch_to_form_s": [], "finish_to_decision_s": []}
QUESTIONS: dict[str, int] = {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_FLAGS, "--no-first-run"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ehr, str]]:
    """The EHR (Medplum behind the authorization server) and the served service."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_ehr(f"{base}/dtr/callback") as ehr:
        env = {
            "CDS_AUTH": "optional",
            "CDS_FHIR_SERVERS": "http://127.0.0.1",
            "CDS_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('app') / 'audit.sqlite3'}",
            "CDS_SMART_CLIENTS": json.dumps({ehr.auth.iss: {"client_id": CLIENT_ID}}),
            "CDS_DTR_CARD_LINK": "on",
            "CDS_PUBLIC_URL": base,
            # Medplum's in-memory search scans every resource: Synthea records are slow
            # to search on a loaded machine, and a query past the deadline is not checked.
            "CDS_FHIR_DEADLINE_S": "20",
            "CDS_FHIR_CALL_TIMEOUT_S": "15",
        }
        served = ServedProcess(env, port=port).start()
        try:
            yield ehr, served.base
        finally:
            served.stop()
    if TIMINGS["launch_to_form_s"]:
        print(
            "\ndocumentation app: median launch→form "
            f"{statistics.median(TIMINGS['launch_to_form_s']):.2f} s, finish→decision "
            f"{statistics.median(TIMINGS['finish_to_decision_s']):.2f} s; questions shown "
            f"{QUESTIONS}"
        )


def _sign(service: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{service}{ORDER_SIGN}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _app_link(response: dict[str, Any]) -> dict[str, Any]:
    return next(
        link
        for card in response["cards"]
        for link in card.get("links", [])
        if link.get("type") == "smart"
    )


def _tab_to(page: Any, selector: str, limit: int = 60) -> None:
    """Press Tab until ``selector`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        if page.evaluate(f"document.activeElement === document.querySelector({selector!r})"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} cannot be reached with the Tab key")


def _answer_with_keyboard(page: Any, link_id: str, favourable: bool) -> None:
    item = POLICY.documentation[link_id]
    if item.answer_type == "decimal":
        _tab_to(page, f'input[name="q-{link_id}"]')
        page.keyboard.type(
            favourable_field(item, date.today())
            if favourable
            else unfavourable_field(item, date.today())
        )
        return
    if item.answer_type == "date":
        _tab_to(page, f'input[name="q-{link_id}"]')
        day = date.today() if favourable else date(2001, 1, 1)
        page.keyboard.type(day.strftime("%m%d%Y"))  # en-US: month, day, year
        return
    _tab_to(page, f'input[name="q-{link_id}"]')
    if item.answer_type == "boolean":
        page.keyboard.press("Space" if favourable else "ArrowRight")  # Yes, or No
        return
    codes = [code for code, _ in item.options]
    wanted = (favourable_field if favourable else unfavourable_field)(item, date.today())
    page.keyboard.press("Space")
    for _ in range(codes.index(wanted) if wanted in codes else 0):
        page.keyboard.press("ArrowRight")


def _launch(page: Any, ehr: Ehr, service: str, context: dict[str, Any]) -> float:
    """The EHR opens the app; the user allows access with the keyboard. Seconds until the
    form is on screen."""
    url = ehr.auth.launch_url(service, ehr.auth.new_launch(context))
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#allow")
    _tab_to(page, "#allow")
    page.keyboard.press("Enter")
    page.wait_for_selector("#summary")
    return time.perf_counter() - started


def _document(
    browser: Any,
    ehr: Ehr,
    service: str,
    context: dict[str, Any],
    *,
    favourable: bool,
    answer_all: bool,
    draft: bool,
    label: str,
) -> str:
    """The clinician's whole visit in the browser, keyboard only: launch, allow, answer
    what is asked (saving as they go), finish. The decision the app shows."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        TIMINGS["launch_to_form_s"].append(_launch(page, ehr, service, context))
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scroll
        assert "Coverage so far: conditional" in page.inner_text("#summary")
        assert page.is_visible("#note") is draft
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"documentation-form-{label}.png"), full_page=True)
        shown = 0
        for _ in range(10):
            open_ids = [
                i.removeprefix("item-")
                for i in page.eval_on_selector_all("fieldset.open", "els => els.map(e => e.id)")
            ]
            if not open_ids:
                break
            shown += len(open_ids)
            for link_id in open_ids if answer_all else open_ids[:1]:
                _answer_with_keyboard(page, link_id, favourable)
            _tab_to(page, "#save")
            page.keyboard.press("Enter")
            page.wait_for_selector("#saved")
            if not answer_all:
                break
        QUESTIONS[label] = shown
        _tab_to(page, "#finish")
        started = time.perf_counter()
        page.keyboard.press("Enter")
        page.wait_for_selector("#outcome")
        TIMINGS["finish_to_decision_s"].append(time.perf_counter() - started)
        assert page.locator(".reason").count() >= 1
        outcome = page.inner_text("#outcome").removeprefix("Decision: ").replace(" ", "-")
    finally:
        page.close()
    assert errors == []
    return str(outcome)


def _ours(ehr: Ehr, patient: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bundle = ehr.fhir.get(f"{ehr.fhir.base}/QuestionnaireResponse?patient={patient}")
    return bundle, [
        e["resource"]
        for e in bundle.get("entry") or []
        if e["resource"].get("author") == {"reference": "Practitioner/dr-doc"}
    ]


CASES = [
    # (fixture, favourable answers, answer every question, order on the FHIR server, outcome)
    ("order-sign__eip-csii-insulin-lispro__conditional.json", True, True, True, "covered"),
    ("order-sign__e0784-insulin__conditional.json", True, False, True, "conditional"),
    ("order-sign__eip-csii-insulin-lispro__conditional.json", False, True, False, "not-covered"),
]


@pytest.mark.parametrize(
    ("fixture", "favourable", "answer_all", "order_on_server", "expected"),
    CASES,
    ids=["covered-after-documentation", "still-conditional", "not-covered-draft-order"],
)
def test_a_clinician_documents_and_sees_the_new_decision(
    browser: Any,
    world: tuple[Ehr, str],
    fixture: str,
    favourable: bool,
    answer_all: bool,
    order_on_server: bool,
    expected: str,
) -> None:
    ehr, service = world
    body = isolate(
        json.loads((REQUESTS / fixture).read_text(encoding="utf-8")),
        uuid.uuid4().hex[:8],
        order_date=date.today().isoformat(),
    )
    signed = _sign(service, body)
    covered, assertion_id = coverage_of_response(signed)
    assert covered == "conditional"
    link = _app_link(signed)
    assert link["url"] == f"{service}/dtr/launch"
    place(ehr, body, with_orders=order_on_server)
    context = {**launch_context(body, assertion_id), "appContext": link["appContext"]}
    outcome = _document(
        browser,
        ehr,
        service,
        context,
        favourable=favourable,
        answer_all=answer_all,
        draft=not order_on_server,
        label=expected,
    )
    assert outcome == expected
    bundle, ours = _ours(ehr, body["context"]["patientId"])
    assert [r["status"] for r in ours] == ["completed"]
    again = {**body, "hookInstance": str(uuid.uuid4())}
    again["prefetch"] = {**body["prefetch"], "questionnaireResponses": bundle}
    covered_again, _ = coverage_of_response(_sign(service, again))
    assert covered_again == expected


SYNTHEA_RECORDS = (
    "diabetes-insulin__Dirk_Kuhlman__1e503533.json",
    "diabetes__Casimira_Nicolas__4dd15313.json",
    "diabetes-insulin__Isaiah_Schaden__b6b36717.json",
)


def _synthea_record(name: str) -> tuple[str, list[dict[str, Any]]]:
    """(patient id, the resources the service reads, and a Coverage) of a Synthea record."""
    path = SHARED / "synthea-r4" / name
    if not path.is_file():
        pytest.skip("../shared (Synthea records) is not present")
    resources = [r for r in assign_ids(read_resources(path)) if service_reads(r)]
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return patient, [*resources, medicare_advantage_coverage(patient)]


@pytest.mark.parametrize("record", SYNTHEA_RECORDS, ids=lambda n: n.split("__")[0])
def test_a_synthea_patient_documented_in_the_browser(
    browser: Any, world: tuple[Ehr, str], record: str
) -> None:
    """The EHR sends no prefetch: the service reads the record from the FHIR server, at
    signing and again after the documentation (which it then finds there)."""
    ehr, service = world
    patient, resources = _synthea_record(record)
    assert not load_resources(resources, ehr.fhir.base, token=ehr.fhir.token).refused
    short = patient[:8]
    orders = copy.deepcopy(
        draft_orders(
            (OrderSpec(hcpcs="E0784", drug="insulin"),),
            patient,
            date.today(),
            "Practitioner/dr-doc",
        )
    )
    for order in orders:
        order["id"] = f"{short}-{order['id']}"
    request = TryRequest(
        fhir_server=ehr.fhir.base, patient=patient, orders=(), token=ehr.fhir.token
    )
    body = hook_request_body(request, orders)
    signed = _sign(service, body)
    covered, _ = coverage_of_response(signed)
    assert covered == "conditional"
    link = _app_link(signed)
    assert not load_resources(orders, ehr.fhir.base, token=ehr.fhir.token).refused
    references = [f"{o['resourceType']}/{o['id']}" for o in orders]
    context = {
        "patient": patient,
        "fhirContext": [*references, {"reference": f"Coverage/ma-{patient}"[:73]}],
        "appContext": link["appContext"],
        "fhirUser": "Practitioner/dr-doc",
        "user": "dr-doc",
    }
    outcome = _document(
        browser,
        ehr,
        service,
        context,
        favourable=True,
        answer_all=True,
        draft=False,
        label=f"synthea-{record.split('__')[0]}",
    )
    _, ours = _ours(ehr, patient)
    assert [r["status"] for r in ours] == ["completed"]
    resigned = _sign(service, {**body, "hookInstance": str(uuid.uuid4())})
    covered_again, _ = coverage_of_response(resigned)
    assert covered_again == outcome, [c["summary"] for c in resigned["cards"]]


def test_denied_consent_shows_an_error_page_and_saves_nothing(
    browser: Any, world: tuple[Ehr, str]
) -> None:
    ehr, service = world
    page = browser.new_page()
    try:
        launch = ehr.auth.new_launch({"patient": "nobody", "fhirContext": ["DeviceRequest/x"]})
        page.goto(ehr.auth.launch_url(service, launch))
        page.wait_for_selector("#deny")
        _tab_to(page, "#deny")
        page.keyboard.press("Enter")
        page.wait_for_selector("#error")
        assert "did not grant" in page.inner_text("#error")
        assert page.title().startswith("Access not granted")
    finally:
        page.close()


def test_an_unknown_issuer_gets_an_error_page_in_the_browser(
    browser: Any, world: tuple[Ehr, str]
) -> None:
    _, service = world
    page = browser.new_page()
    try:
        page.goto(f"{service}/dtr/launch?iss=https://unknown.example.org/fhir&launch=abc")
        assert "not registered" in page.inner_text("#error")
        assert page.url.startswith(service)  # no redirect anywhere
    finally:
        page.close()


@pytest.mark.parametrize(
    ("claims", "header"),
    [({"iss": "https://attacker.example.org/fhir"}, {}), ({}, {"alg": 5})],
    ids=["another-issuer", "alg-not-a-string"],
)
def test_an_id_token_that_does_not_verify_shows_a_sign_in_error_page_and_saves_nothing(
    browser: Any, world: tuple[Ehr, str], claims: dict[str, Any], header: dict[str, Any]
) -> None:
    ehr, service = world
    patient = f"nobody-{uuid.uuid4()}"
    page = browser.new_page()
    ehr.auth.id_token_claims, ehr.auth.id_token_header = claims, header
    try:
        launch = ehr.auth.new_launch({"patient": patient, "fhirContext": ["DeviceRequest/x"]})
        page.goto(ehr.auth.launch_url(service, launch))
        page.wait_for_selector("#allow")
        with page.expect_response(lambda r: "/dtr/callback" in r.url) as callback:
            _tab_to(page, "#allow")
            page.keyboard.press("Enter")
        response = callback.value
        page.wait_for_selector("#error")
        assert response.status == 401
        assert page.title().startswith("Sign-in not accepted")
        assert "could not be verified" in page.inner_text("#error")
        assert page.url.startswith(f"{service}/dtr/callback")  # not sent on to the form
    finally:
        ehr.auth.id_token_claims, ehr.auth.id_token_header = {}, {}
        page.close()
    assert _ours(ehr, patient)[1] == []
