"""The decision page a coverage card links to, served from the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask

from cds_service import create_app
from tests.builders import (
    CONDITION_NOTE,
    INSULIN_PUMP,
    PATIENT_NAME,
    VANCOMYCIN_PUMP,
    named_patient_request,
)
from tests.cds_service.test_audit import _unreachable
from tests.conftest import FIXED_NOW, FIXTURES, ORDER_SIGN, sequential_uuids

DETAILS = "Decision details"


def _page_links(answer: dict[str, Any]) -> list[str]:
    return [
        link["url"]
        for card in answer["cards"]
        for link in card.get("links", ())
        if link["label"].startswith(DETAILS)
    ]


def _signed(app: Flask, body: dict[str, Any]) -> dict[str, Any]:
    response = app.test_client().post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json
    return answer


def test_each_coverage_card_links_its_decision_on_one_page(service: Flask) -> None:
    answer = _signed(service, named_patient_request(INSULIN_PUMP + VANCOMYCIN_PUMP))
    links = _page_links(answer)
    coverage_cards = [c for c in answer["cards"] if c["source"]["topic"]["code"] == "guideline"]
    assert len(links) == len(coverage_cards) == 2
    pages = {url.split("#")[0] for url in links}
    assert len(pages) == 1
    assert sorted(urlsplit(url).fragment for url in links) == ["decision-1", "decision-2"]
    (page,) = pages
    assert page.startswith("http://localhost/decisions/")


def test_the_page_shows_the_whole_trace_and_no_phi(service: Flask) -> None:
    answer = _signed(service, named_patient_request(INSULIN_PUMP + VANCOMYCIN_PUMP))
    path = urlsplit(_page_links(answer)[0]).path
    response = service.test_client().get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page = response.get_data(as_text=True)
    policy = service.extensions["cds_policy"]
    # Every criterion with its citation, the guidance, and the evidence references.
    assert "Diagnosis of diabetes mellitus" in page
    assert "NCD 280.14 Infusion Pumps" in page
    assert "Part B or Part D" in page
    assert "Vancomycin by external infusion pump" in page
    assert "Condition/" in page
    assert policy.version in page
    # Only what the audit holds: no name, no free text of the record.
    assert PATIENT_NAME.split()[1] not in page
    assert CONDITION_NOTE not in page


@pytest.mark.parametrize("token", ["x" * 40, "short", "not.a-token!" * 4])
def test_an_unknown_page_is_a_404_page(service: Flask, token: str) -> None:
    response = service.test_client().get(f"/decisions/{token}")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "does not exist or has expired" in response.get_data(as_text=True)


def test_a_page_expires(database_url: str) -> None:
    now = [FIXED_NOW]
    app = create_app(
        {"AUTH": "optional", "DATABASE_URL": database_url, "DECISION_PAGE_TTL_S": 3600},
        clock=lambda: now[0],
        new_uuid=sequential_uuids(),
    )
    try:
        path = urlsplit(_page_links(_signed(app, named_patient_request(INSULIN_PUMP)))[0]).path
        assert app.test_client().get(path).status_code == 200
        now[0] = FIXED_NOW + timedelta(seconds=3601)
        assert app.test_client().get(path).status_code == 404
    finally:
        app.extensions["cds_store"].dispose()


def test_no_link_when_the_audit_write_failed(
    database_url: str, tmp_path: Path, make_service: Callable[..., Flask]
) -> None:
    app = make_service(DATABASE_URL=_unreachable(database_url, tmp_path))
    answer = _signed(app, named_patient_request(INSULIN_PUMP))
    assert answer["cards"]
    assert _page_links(answer) == []
    assert all(
        link["url"].startswith("https://") for c in answer["cards"] for link in c.get("links", ())
    )


def test_guidance_follows_the_indication_not_a_failed_requirement(service: Flask) -> None:
    """Deferoxamine whose face-to-face visit is stale: not covered for want of the visit,
    yet the pump's indication is met, so its drug is still billed to Part B."""
    body = json.loads(
        (FIXTURES / "requests/order-sign__dme-f2f-stale-deferoxamine__not-covered.json").read_text()
    )
    answer = _signed(service, body)
    page = service.test_client().get(urlsplit(_page_links(answer)[0]).path).get_data(as_text=True)
    assert "Bill Part B" in page
    assert "Not Part B" not in page


@pytest.mark.parametrize("path", ["/decisions/a/b", "/decisions/", "/decisions/x%2Fy"])
def test_any_error_under_the_page_path_is_an_html_page(service: Flask, path: str) -> None:
    response = service.test_client().get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "<h1>" in response.get_data(as_text=True)
