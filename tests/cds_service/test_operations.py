"""Health, readiness, metrics and JSON logs (``cds_service.operations``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from cds_service.config import ConfigError
from cds_service.operations import JsonLogFormatter, fhir_failure_code, jwt_refusal_code
from tests.builders import order_sign_request
from tests.conftest import FIXTURES, ORDER_SIGN, load_json, make_app
from tests.misbehaving_fhir_server import MisbehavingFhirServer
from tests.served_process import ServedProcess, free_port

COVERED = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"
SERVICE_ID = "infusion-pump-coverage-order-sign"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _down_database_url() -> str:
    """A PostgreSQL URL where nothing listens: connections are refused at once."""
    return f"postgresql://cds@127.0.0.1:{free_port()}/cds"


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_ready_with_its_database(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"
    assert response.json["dependencies"]["database"] == "ok"
    assert response.json["dependencies"]["jwt_replay_cache"] == "ok"
    assert response.json["dependencies"]["audit_trail"] == "recording"
    assert response.json["dependencies"]["policy"].startswith("MCS051.01 ")


def test_ready_without_its_database_and_still_answers() -> None:
    """Unsigned calls allowed: the database down is reported, the service stays ready, and a
    clinical call is answered (unrecorded, counted as an audit write failure)."""
    client = make_app({"DATABASE_URL": _down_database_url()}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["status"] == "ready"
    assert ready.json["dependencies"]["database"] == "unavailable"
    assert ready.json["dependencies"]["audit_trail"] == "not recording"
    before = _value("cds_audit_write_failures_total", reason="database_error")
    answered = client.post(ORDER_SIGN, json=load_json(COVERED))
    assert answered.status_code == 200
    assert answered.json["cards"]
    assert _value("cds_audit_write_failures_total", reason="database_error") == before + 1
    before_backoff = _value("cds_audit_write_failures_total", reason="database_backoff")
    assert client.post(ORDER_SIGN, json=load_json(COVERED)).status_code == 200
    assert _value("cds_audit_write_failures_total", reason="database_backoff") == before_backoff + 1
    # Within the back-off the database is not tried again; still ready, still reported down.
    again = client.get("/readyz")
    assert (again.status_code, again.json["dependencies"]["database"]) == (200, "unavailable")


def test_not_ready_when_signed_calls_cannot_be_checked() -> None:
    """Every call must be signed and the replay cache is in the database: 503."""
    client = make_app({"DATABASE_URL": _down_database_url(), "AUTH": "required"}).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["dependencies"]["jwt_replay_cache"] == "unavailable"


def test_metrics_count_calls_latency_and_decisions(client: FlaskClient) -> None:
    labels = {"service": SERVICE_ID, "kind": "hook"}
    calls = _value("cds_service_calls_total", **labels, status="200")
    bad = _value("cds_service_calls_total", **labels, status="400")
    timed = _value("cds_service_call_duration_seconds_count", **labels)
    decision = {"service": SERVICE_ID, "rule": "EIP-CSII", "outcome": "covered"}
    decided = _value("cds_decisions_total", **decision)
    unknown = _value("cds_service_calls_total", service="unknown", kind="hook", status="404")

    assert client.post(ORDER_SIGN, json=load_json(COVERED)).status_code == 200
    assert client.post(ORDER_SIGN, data=b"{not json", content_type="application/json").status_code
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404

    assert _value("cds_service_calls_total", **labels, status="200") == calls + 1
    assert _value("cds_service_calls_total", **labels, status="400") == bad + 1
    assert _value("cds_service_call_duration_seconds_count", **labels) == timed + 2
    assert _value("cds_decisions_total", **decision) == decided + 1
    assert _value("cds_service_calls_total", service="unknown", kind="hook", status="404") == (
        unknown + 1
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE cds_service_call_duration_seconds histogram" in text
    assert (
        f'cds_decisions_total{{outcome="covered",rule="EIP-CSII",service="{SERVICE_ID}"}}' in text
    )


def test_metrics_count_jwt_refusals() -> None:
    client = make_app({"AUTH": "required"}).test_client()
    missing = _value("cds_jwt_refusals_total", reason="missing_token")
    malformed = _value("cds_jwt_refusals_total", reason="malformed")
    assert client.post(ORDER_SIGN, json=load_json(COVERED)).status_code == 401
    unreadable = {"Authorization": "Bearer not.a.jwt"}
    assert client.post(ORDER_SIGN, json=load_json(COVERED), headers=unreadable).status_code == 401
    assert _value("cds_jwt_refusals_total", reason="missing_token") == missing + 1
    assert _value("cds_jwt_refusals_total", reason="malformed") == malformed + 1


def test_metrics_count_fhir_fetch_failures(fhir_faults: MisbehavingFhirServer) -> None:
    client = make_app({"FHIR_SERVERS": ["http://127.0.0.1"]}).test_client()
    refused = _value("cds_fhir_fetch_failures_total", reason="refused")
    not_allowed = _value("cds_fhir_fetch_failures_total", reason="not_allowed")
    body = order_sign_request("p1", fhir_server=fhir_faults.base("status-401"))
    seen_before = len(fhir_faults.requests_seen)
    assert client.post(ORDER_SIGN, json=body).status_code == 412
    # One refusal per query the decision needed (only the keys its rules can read).
    queries = len(fhir_faults.requests_seen) - seen_before
    assert queries > 0
    assert _value("cds_fhir_fetch_failures_total", reason="refused") == refused + queries
    strict = make_app({}).test_client()  # no FHIR server allowed
    assert strict.post(ORDER_SIGN, json=body).status_code == 412
    assert _value("cds_fhir_fetch_failures_total", reason="not_allowed") == not_allowed + queries


@pytest.mark.parametrize(
    ("remote", "headers", "allowed"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("10.0.0.7", {}, False),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, False),  # through a local proxy
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}, False),
        ("127.0.0.1", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, False),
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, True),
        ("10.0.0.7", {"X-Forwarded-For": "127.0.0.1"}, False),  # cannot talk its way in
    ],
)
def test_metrics_only_to_allowed_addresses(
    client: FlaskClient, remote: str, headers: dict[str, str], allowed: bool
) -> None:
    response = client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": remote})
    if allowed:
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain")
    else:
        assert response.status_code == 403
        assert response.json["resourceType"] == "OperationOutcome"
        assert "cds_" not in response.get_data(as_text=True)


def test_metrics_allow_list_is_configurable() -> None:
    client = make_app({"METRICS_ALLOW": ["10.0.0.0/8"]}).test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"METRICS_ALLOW": ["not-an-address"]}, "CDS_METRICS_ALLOW"),
        ({"LOG_FORMAT": "xml"}, "CDS_LOG_FORMAT"),
    ],
)
def test_bad_operations_settings_stop_the_start(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_app(settings)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("no bearer token", "missing_token"),
        ("malformed token: DecodeError", "malformed"),
        ("algorithm 'HS256' not accepted", "algorithm"),
        ("token rejected: ExpiredSignatureError", "expired"),
        ("token rejected: InvalidAudienceError", "audience"),
        ("token rejected: InvalidSignatureError", "signature"),
        ("token rejected: DecodeError", "claims"),
        ("jti replayed", "replay"),
        ("JWKS fetch answered 500", "jwks"),
        ("unknown kid", "kid"),
        ("something new", "other"),
    ],
)
def test_jwt_refusal_codes(reason: str, code: str) -> None:
    assert jwt_refusal_code(reason) == code


def test_fhir_failure_codes() -> None:
    from cds_service import fhir_client

    assert fhir_failure_code(fhir_client.TIMED_OUT) == "timeout"
    assert fhir_failure_code(fhir_client.NOT_ALLOWED) == "not_allowed"
    assert fhir_failure_code("anything else") == "other"


def test_json_log_lines_carry_the_hook_instance(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.setFormatter(JsonLogFormatter())
    body = load_json(COVERED)
    with caplog.at_level(logging.INFO):
        assert client.post(ORDER_SIGN, json=body).status_code == 200
    lines = [json.loads(line) for line in caplog.text.splitlines()]
    assert lines
    assert any(line["message"].startswith("unsigned call") for line in lines)  # before parsing
    assert any(line["message"].startswith("answered") for line in lines)
    for line in lines:
        assert line["hookInstance"] == body["hookInstance"]
        assert set(line) >= {"time", "level", "logger", "message"}


# -- served: several gunicorn workers, JSON logs -----------------------------------------


@pytest.fixture(scope="module")
def served_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``serve --workers 3`` with JSON logs; its base URL and the file its stderr goes to."""
    folder = tmp_path_factory.mktemp("workers")
    env = {
        "CDS_AUTH": "optional",
        "CDS_DATABASE_URL": f"sqlite:///{folder / 'audit.sqlite3'}",
        "CDS_LOG_FORMAT": "json",
    }
    log = folder / "stderr.log"
    served = ServedProcess(
        env, workers=3, log_path=log, unset=("PROMETHEUS_MULTIPROC_DIR",)
    ).start()
    try:
        yield served.base, log
    finally:
        served.stop()


def _sample(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_metrics_sum_every_worker(served_workers: tuple[str, Path]) -> None:
    base, _ = served_workers
    series = f'cds_service_calls_total{{kind="hook",service="{SERVICE_ID}",status="200"}}'
    before = _sample(requests.get(f"{base}/metrics", timeout=10).text, series)
    body = COVERED.read_bytes()
    for _ in range(12):
        # A new connection each time, so the calls spread over the workers.
        response = requests.post(
            f"{base}{ORDER_SIGN}",
            data=body,
            headers={"Content-Type": "application/json", "Connection": "close"},
            timeout=30,
        )
        assert response.status_code == 200
    # Whichever worker answers /metrics, it reports the sum over all of them.
    for _ in range(6):
        text = requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"}).text
        assert _sample(text, series) == before + 12
    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["dependencies"]["database"] == "ok"


def test_served_logs_are_json_lines(served_workers: tuple[str, Path]) -> None:
    base, log = served_workers
    body = load_json(COVERED)
    body["hookInstance"] = "6f2b7c1e-8a5d-4c3b-9e0f-1a2b3c4d5e6f"
    assert requests.post(f"{base}{ORDER_SIGN}", json=body, timeout=30).status_code == 200
    deadline = time.monotonic() + 10
    while body["hookInstance"] not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own, too
    assert any(line["logger"] == "gunicorn.access" for line in lines)
    ours = [line for line in lines if line.get("hookInstance") == body["hookInstance"]]
    assert any(line["message"].startswith("answered") for line in ours)


def test_a_refused_call_logs_its_hook_instance(caplog: pytest.LogCaptureFixture) -> None:
    """Authentication runs before the body is parsed; its log line is tagged all the same."""
    client = make_app({"AUTH": "required"}).test_client()
    caplog.handler.setFormatter(JsonLogFormatter())
    body = load_json(COVERED)
    with caplog.at_level(logging.INFO):
        assert client.post(ORDER_SIGN, json=body).status_code == 401
    lines = [json.loads(line) for line in caplog.text.splitlines()]
    refused = [line for line in lines if "authentication failed" in line["message"]]
    assert [line["hookInstance"] for line in refused] == [body["hookInstance"]]
