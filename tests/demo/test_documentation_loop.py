"""``make demo``'s documentation loop: the service's card link is on, the SMART
authorization server answers its discovery, and in headless Chromium a person signs a
conditional order on the try page, clicks "Complete the documentation", is signed in
(auto-consent), answers, saves and finishes in the app (the QuestionnaireResponse on the
demo FHIR server), and signs again to see the order covered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import requests

from coverage_policy.loader import load_policy
from demo.run import SMART_CLIENT_ID, service_settings
from tests.conftest import ROOT
from tests.demo.running import running_demo
from tests.demo.test_try_page import CHROMIUM_FLAGS, chromium_or_skip
from tests.documentation_app import favourable
from tests.medplum_server import node_or_skip

START_TIMEOUT_S = 180
CONDITIONAL = "fx-e0784-insulin--conditional"
POLICY = load_policy()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``python -m demo.run`` on free ports; its URLs (``fhir``, ``service``, ``page``,
    ``smart``: the SMART server's FHIR base, the ``iss``)."""
    node_or_skip()
    folder = tmp_path_factory.mktemp("demo")
    with running_demo(folder, "--synthea", str(folder / "none")) as started:
        yield started.urls
    assert started.process.returncode == 0, started.output


def test_the_demo_settings_turn_the_card_link_on_for_the_demo_smart_server() -> None:
    settings = service_settings(
        "http://127.0.0.1:8080", "http://127.0.0.1:8070", "http://127.0.0.1:8060/fhir"
    )
    assert settings["CDS_DTR_CARD_LINK"] == "on"
    assert json.loads(settings["CDS_SMART_CLIENTS"]) == {
        "http://127.0.0.1:8060/fhir": {"client_id": SMART_CLIENT_ID}
    }
    assert settings["CDS_AUTH"] == "optional"


def _sign(page: str, patient: str) -> dict[str, Any]:
    options = requests.get(f"{page}/api/options", timeout=10).json()
    found = next(p for p in options["patients"] if p["id"] == patient)
    order = found["orders"][0]
    form = {
        "patient": patient,
        "encounter": found.get("encounter") or "",
        "hcpcs": order["hcpcs"],
        "drug": order["drug"],
        "route": order.get("route") or "",
    }
    answer = requests.post(f"{page}/api/sign", json=form, timeout=60)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_smart_server_answers_discovery_and_a_card_launch_reaches_the_form(
    demo: dict[str, str],
) -> None:
    smart = demo["smart"]
    discovery = requests.get(f"{smart}/.well-known/smart-configuration", timeout=10)
    assert discovery.status_code == 200
    config = discovery.json()
    assert config["issuer"] == smart
    assert config["authorization_endpoint"].startswith("http://127.0.0.1:")
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert "launch-ehr" in config["capabilities"]
    about = requests.get(smart.removesuffix("/fhir") + "/", timeout=10)
    assert "auto-consent" in about.text
    assert requests.get(f"{smart}/Patient", timeout=10).status_code == 401  # token needed

    signed = _sign(demo["page"], CONDITIONAL)
    links = [
        link
        for card in signed["response"]["cards"]
        for link in card.get("links", [])
        if link.get("type") == "smart"
    ]
    assert [link["label"] for link in links] == ["Complete the documentation"]
    link = links[0]
    assert link["url"] == f"{demo['service']}/dtr/launch"
    launched = requests.post(
        f"{demo['page']}/api/launch",
        json={"url": link["url"], "appContext": link["appContext"], "request": signed["request"]},
        timeout=10,
    )
    assert launched.status_code == 200, launched.text
    url = launched.json()["url"]
    assert url.startswith(f"{link['url']}?iss=")
    # The browser's way through: launch -> authorize (auto-consent) -> callback -> the form.
    form = requests.Session().get(url, timeout=60)
    assert form.status_code == 200, form.text
    assert form.url == f"{demo['service']}/dtr/form"
    assert "Coverage so far: conditional" in form.text

    refused = requests.post(
        f"{demo['page']}/api/launch",
        json={"url": "https://elsewhere.example/launch", "request": signed["request"]},
        timeout=10,
    )
    assert refused.status_code == 400  # only the service's own app is launched


def _answer(app: Any, link_id: str) -> None:
    item = POLICY.documentation[link_id]
    value = favourable(item, date.today())
    if item.answer_type in ("decimal", "date"):
        app.fill(f'input[name="q-{link_id}"]', value)
    else:
        app.check(f'input[name="q-{link_id}"][value="{value}"]')


def test_a_person_documents_from_the_card_and_signs_again_to_see_it_covered(
    demo: dict[str, str],
) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(demo["page"])
            page.wait_for_selector("#patient option", state="attached")
            page.select_option("#patient", CONDITIONAL)
            page.click("#sign")
            page.wait_for_selector("#result:not([hidden])")
            assert page.locator("#decisions td.covered-conditional").count() >= 1
            with page.expect_popup() as popup:
                page.click("#cards a.launch")
            app = popup.value
            app.wait_for_selector("#summary", timeout=60_000)
            assert "Coverage so far: conditional" in app.inner_text("#summary")
            for _ in range(10):
                open_ids = [
                    i.removeprefix("item-")
                    for i in app.eval_on_selector_all("fieldset.open", "els => els.map(e => e.id)")
                ]
                if not open_ids:
                    break
                for link_id in open_ids:
                    _answer(app, link_id)
                app.click("#save")
                app.wait_for_selector("#saved")
            app.click("#finish")
            app.wait_for_selector("#outcome", timeout=60_000)
            assert app.inner_text("#outcome") == "Decision: covered"
            artifacts = ROOT / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            app.screenshot(path=str(artifacts / "demo-documentation-done.png"), full_page=True)

            saved = requests.get(
                f"{demo['fhir']}/QuestionnaireResponse?patient={CONDITIONAL}", timeout=10
            ).json()
            statuses = [e["resource"]["status"] for e in saved.get("entry") or []]
            assert statuses == ["completed"]

            page.bring_to_front()
            page.click("#sign")
            page.wait_for_selector("#decisions td.covered-covered", timeout=60_000)
            assert page.locator("#decisions td.covered-conditional").count() == 0
            assert errors == []
        finally:
            browser.close()


def test_the_try_page_without_a_smart_server_launches_nothing() -> None:
    from demo.try_page import create_page

    page = create_page(
        service_url="http://127.0.0.1:1", fhir_server="http://127.0.0.1:2/fhir", patients=[]
    )
    answer = page.test_client().post("/api/launch", json={"url": "x", "request": {}})
    assert answer.status_code == 404
