"""A worker's warm-up: the built-in call is one the service decides, and deciding it in a
worker answers, records and counts nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_service import routes
from cds_service.operations import metrics_text
from cds_service.tables import criterion_result, decision, decision_page, issued_card, service_call
from cds_service.warm_up import (
    WARM_UP_SERVICE,
    warm_up_master,
    warm_up_request,
    warm_up_worker,
)
from hooks import SERVICES
from tests.conftest import make_app
from tests.response_validation import validate_cds_response

COVERAGE_INFORMATION = (
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
)


def _service_metrics() -> list[str]:
    """The service's own metric samples (not the interpreter's) that count something:
    series created at zero count nothing."""
    return [
        line
        for line in metrics_text().decode().splitlines()
        if line.startswith("cds_") and float(line.rsplit(" ", 1)[1]) != 0
    ]


def test_a_worker_creates_its_call_metrics_at_zero() -> None:
    """So that its first call does not create them, and every series exists from the start."""
    warm_up_worker(make_app())
    lines = metrics_text().decode().splitlines()
    for service_id in SERVICES:
        series = f'cds_service_calls_total{{kind="hook",service="{service_id}",status="200"}}'
        assert any(line.startswith(series) for line in lines), service_id


def _row_counts(app: object) -> dict[str, int]:
    store = app.extensions["cds_store"]  # type: ignore[attr-defined]
    with store.engine.connect() as connection:
        return {
            table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            for table in (service_call, decision, criterion_result, issued_card, decision_page)
        }


def _schema_versions(app: object) -> list[tuple[object, ...]]:
    store = app.extensions["cds_store"]  # type: ignore[attr-defined]
    with store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT * FROM schema_version"))]


def test_the_built_in_call_is_decided_like_any_call() -> None:
    """Posted as a client would, it gets a coverage decision with its cards: the warm-up
    runs the whole decision path, not an early refusal."""
    response = (
        make_app()
        .test_client()
        .post(
            f"/cds-services/{WARM_UP_SERVICE}",
            data=warm_up_request(),
            content_type="application/json",
        )
    )
    assert response.status_code == 200
    body = response.get_json()
    validate_cds_response(body)
    assert body["cards"]
    extensions = [
        extension
        for action in body["systemActions"]
        for extension in action["resource"].get("extension", [])
        if extension["url"] == COVERAGE_INFORMATION
    ]
    assert extensions
    assert "fhirServer" not in json.loads(warm_up_request())  # nothing can be fetched


def test_warming_up_records_and_counts_nothing(tmp_path: Path) -> None:
    app = make_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}"})
    metrics_before = _service_metrics()
    versions_before = _schema_versions(app)
    warm_up_worker(app)
    warm_up_worker(app)
    assert set(_row_counts(app).values()) == {0}
    # Its commit (which starts the worker's write-ahead log) rewrites a row as it was.
    assert _schema_versions(app) == versions_before
    assert _service_metrics() == metrics_before
    # The audit write it rehearsed still works for the first real call.
    response = app.test_client().post(
        f"/cds-services/{WARM_UP_SERVICE}",
        data=warm_up_request(),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert _row_counts(app)["service_call"] == 1
    assert _service_metrics() != metrics_before  # a real call is counted


def test_a_warm_up_that_fails_only_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(routes, "answer_call", broken)
    with caplog.at_level(logging.WARNING, logger="cds_service.warm_up"):
        warm_up_worker(make_app())
    assert "worker warm-up failed (RuntimeError)" in caplog.text


def test_the_master_warms_up_and_leaves_no_connection_to_inherit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}"})
    store = app.extensions["cds_store"]  # type: ignore[attr-defined]
    metrics_before = _service_metrics()
    with caplog.at_level(logging.INFO, logger="cds_service.warm_up"):
        warm_up_master(app, calls=3)
    assert "master warmed up" in caplog.text
    assert store.engine.pool.checkedin() == 0  # a forked worker opens its own
    assert set(_row_counts(app).values()) == {0}
    assert _service_metrics() == metrics_before


def test_a_master_warm_up_that_fails_stops_and_only_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*_args: object, **_kwargs: object) -> None:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(routes, "answer_call", broken)
    with caplog.at_level(logging.WARNING, logger="cds_service.warm_up"):
        warm_up_master(make_app(), calls=5)
    assert "master warm-up failed (RuntimeError)" in caplog.text
    assert len(calls) == 1
