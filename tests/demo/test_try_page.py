"""The demo's "try it" page in headless Chromium (Debian ``chromium``, driven by
Playwright), against the real FHIR server and the served service."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cds_service.fhir_load import load_resources
from demo.data import DemoPatient, fixture_patients
from demo.try_page import create_page
from tests.medplum_server import MedplumServer, start_medplum
from tests.served_process import ServedProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PATIENTS = (
    "fx-e0781-vancomycin--not-covered",
    "fx-e0784-insulin--conditional",
    "fx-e0250-hospital-bed--out-of-scope",
)


def chromium_or_skip() -> str:
    """The Debian chromium binary; skip without it, except in CI where it must be there."""
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("chromium is required in CI for the page tests (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def fhir() -> Iterator[tuple[MedplumServer, list[DemoPatient]]]:
    """The demo FHIR server (no token), loaded with a few fixture patients."""
    server = start_medplum("")
    try:
        patients = [p for p in fixture_patients() if p.id in PATIENTS]
        for patient in patients:
            assert not load_resources(patient.resources, server.base).refused
        yield server, patients
    finally:
        server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``infusion-pump-cds serve`` with the demo's development settings; its base URL."""
    env = {
        "CDS_AUTH": "optional",
        "CDS_FHIR_SERVERS": "http://127.0.0.1",
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('page') / 'audit.sqlite3'}",
    }
    served = ServedProcess(env).start()
    try:
        yield served.base
    finally:
        served.stop()


@pytest.fixture(scope="module")
def page_url(fhir: tuple[MedplumServer, list[DemoPatient]], service: str) -> Iterator[str]:
    from werkzeug.serving import make_server

    server, patients = fhir
    app = create_page(service_url=service, fhir_server=server.base, patients=patients)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, page_url: str) -> Iterator[Any]:
    opened = browser.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(page_url)
    opened.wait_for_selector("#patient option", state="attached")
    yield opened
    opened.close()
    assert errors == []  # no script error on the page


def test_signing_renders_cards_and_coverage_information(page: Any, service: str) -> None:
    page.select_option("#patient", "fx-e0781-vancomycin--not-covered")
    assert page.input_value("#hcpcs") == "E0781"  # the patient's suggested order
    assert page.input_value("#drug") == "vancomycin"
    page.click("#sign")
    page.wait_for_selector("#result:not([hidden])")
    covered = page.locator("#decisions td.covered-not-covered")
    assert covered.count() == 2  # the pump and the drug order
    cards = page.locator("#cards article.card")
    assert cards.count() >= 2
    first = cards.first
    assert "vancomycin" in first.locator("h3").inner_text().lower()
    assert first.locator(".detail strong").count() > 0  # markdown rendered
    links = first.locator(".links a")
    assert links.count() >= 1
    assert links.first.get_attribute("target") == "_blank"
    # The first link is the decision page the service serves from its audit trail.
    assert links.first.get_attribute("href").startswith(f"{service}/decisions/")
    suggestions = page.locator(".suggestions button")
    assert suggestions.count() >= 1  # the covered alternatives
    suggestions.first.click()
    assert suggestions.first.inner_text().startswith("Accepted: ")
    assert page.locator(".override select option").count() > 1
    assert "signed" in page.inner_text("#status").lower()
    assert '"hook": "order-sign"' in page.text_content("#raw")


def test_a_conditional_order_names_the_documentation(page: Any) -> None:
    page.select_option("#patient", "fx-e0784-insulin--conditional")
    page.select_option("#crd_version", "2.2")
    page.click("#sign")
    page.wait_for_selector("#result:not([hidden])")
    row = page.locator("#decisions tr[data-order='DeviceRequest/pump-1']")
    assert "conditional" in row.inner_text()
    assert "Questionnaire/mcs051" in row.inner_text()


def test_an_empty_order_is_refused_with_a_message(page: Any) -> None:
    page.select_option("#patient", "fx-e0250-hospital-bed--out-of-scope")
    assert page.input_value("#hcpcs") == ""  # E0250 is not a pump: not offered
    page.select_option("#hcpcs", "")
    page.select_option("#drug", "")
    page.click("#sign")
    page.wait_for_selector("#status.error")
    assert "nothing to sign" in page.inner_text("#status")


def test_card_text_is_escaped(page: Any) -> None:
    html = page.evaluate(
        "markdown('<img src=x onerror=alert(1)> **bold** [x](javascript:alert(1))')"
    )
    assert "<img" not in html
    assert "&lt;img" in html
    assert "<strong>bold</strong>" in html
    assert "href" not in html  # only http(s) links become links
