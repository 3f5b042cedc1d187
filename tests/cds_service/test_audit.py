"""The audit trail: every answered call recorded, identifiers only, never failing the answer."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from cds_service import routes
from cds_service.audit import (
    AuditRecord,
    CallTimings,
    CardRecord,
    CriterionRecord,
    DecisionRecord,
    _audit_rows,
    _AuditRows,
    _insert_audit_rows,
    _write_rows,
    audit_for_assertion,
    build_audit_record,
    record_service_call,
)
from cds_service.auth import ClientIdentity
from cds_service.store import Store, open_store
from cds_service.tables import (
    criterion_result,
    decision,
    decision_page,
    issued_card,
    metadata,
    service_call,
)
from hooks.coverage_information import EXTENSION_URL
from hooks.request import HookRequest
from tests.builders import (
    CONDITION_NOTE,
    INSULIN_PUMP,
    NO_PUMP,
    PATIENT_NAME,
    VANCOMYCIN_PUMP,
    named_patient_request,
)
from tests.conftest import FIXED_NOW, ORDER_SIGN
from tests.postgres_cluster import PostgresServer

ISSUER = "https://ehr.example.org/cds-client"


@pytest.fixture
def signed_by_issuer(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Client authentication that accepts every call as coming from ``ISSUER``; the
    endpoint URLs it was asked about."""
    endpoints: list[str] = []

    def authenticate(settings: Any, *, endpoint_url: str) -> ClientIdentity:
        endpoints.append(endpoint_url)
        return ClientIdentity(issuer=ISSUER, jti=f"jti-{len(endpoints)}")

    monkeypatch.setattr(routes, "authenticate_client", authenticate)
    return endpoints


def _rows(store: Store, table: sa.Table) -> list[dict[str, Any]]:
    with store.reading() as connection:
        ordered = sa.select(table).order_by(*table.primary_key.columns)
        return [dict(r) for r in connection.execute(ordered).mappings()]


def _assertion_ids(response: dict[str, Any]) -> dict[str, str]:
    found = {}
    for action in response["systemActions"]:
        resource = action["resource"]
        for extension in resource["extension"]:
            if extension["url"] == EXTENSION_URL:
                for part in extension["extension"]:
                    if part["url"] == "coverage-assertion-id":
                        found[f"{resource['resourceType']}/{resource['id']}"] = part["valueString"]
    return found


def test_a_call_is_recorded_decision_by_decision(
    service: Flask, service_client: FlaskClient, signed_by_issuer: list[str]
) -> None:
    body = named_patient_request(INSULIN_PUMP + VANCOMYCIN_PUMP)
    response = service_client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    store: Store = service.extensions["cds_store"]
    answer = response.json
    assert signed_by_issuer == [f"http://localhost{ORDER_SIGN}"]

    (call,) = _rows(store, service_call)
    assert call["recorded_at"] == FIXED_NOW
    assert (call["service_id"], call["hook"], call["hook_instance"]) == (
        "infusion-pump-coverage-order-sign",
        "order-sign",
        body["hookInstance"],
    )
    assert call["client_iss"] == ISSUER
    assert call["crd_version"] == "2.0"
    assert call["card_count"] == len(answer["cards"])
    assert call["fetch_ms"] == 0.0
    assert 0 <= call["prefetch_ms"] <= call["total_ms"]
    assert 0 < call["decide_ms"] <= call["total_ms"]

    decisions = _rows(store, decision)
    assert call["decision_count"] == len(decisions) == 2
    assertion_ids = _assertion_ids(answer)
    for row in decisions:
        assert row["call_id"] == call["id"]
        assert row["coverage_assertion_id"] == assertion_ids[row["order_references"][0]]
        assert (row["policy_id"], row["policy_version"]) == (
            service.extensions["cds_policy"].id,
            service.extensions["cds_policy"].version,
        )
    assert {r["order_references"][0] for r in decisions} == {
        "DeviceRequest/dr-insulin",
        "DeviceRequest/dr-vanco",
    }
    decided = {r["order_references"][0]: (r["rule_id"], r["outcome"]) for r in decisions}
    assert decided == {
        "DeviceRequest/dr-insulin": ("EIP-CSII", "conditional"),
        "DeviceRequest/dr-vanco": ("EIP-VANCO", "not-covered"),
    }

    cards = _rows(store, issued_card)
    assert [c["card_uuid"] for c in cards] == [c["uuid"] for c in answer["cards"]]
    by_id = {r["id"]: r for r in decisions}
    for row, card in zip(cards, answer["cards"], strict=True):
        assert row["suggestion_uuids"] == [s["uuid"] for s in card.get("suggestions", [])]
        assert row["card_type"] == card["source"]["topic"]["code"]
        associated = [a["reference"] for a in card["extension"]["davinci-crd.associated-resource"]]
        assert by_id[row["decision_id"]]["order_references"] == associated
    assert sum(len(c["suggestion_uuids"]) for c in cards) == 2  # elastomeric pump, gravity drip


def test_criteria_keep_their_truth_and_evidence_references(
    service: Flask, service_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    original = routes.build_audit_record

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["result"])
        return original(**kwargs)

    monkeypatch.setattr(routes, "build_audit_record", spy)
    response = service_client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP))
    assert response.status_code == 200
    (result,) = seen
    (item,) = result.decisions
    decided = item.decision
    expected = [
        (
            rr.rule.id,
            rr.rule.kind.value,
            cr.criterion.id,
            cr.truth.value,
            cr.deciding,
            [e.reference for e in cr.evidence],
        )
        for rr in (decided.indication, *decided.requirements, *decided.guidance)
        for cr in rr.results
    ]
    rows = _rows(service.extensions["cds_store"], criterion_result)
    assert [
        (
            r["rule_id"],
            r["rule_kind"],
            r["criterion_id"],
            r["truth"],
            r["deciding"],
            r["evidence_references"],
        )
        for r in rows
    ] == expected
    diabetes = next(r for r in rows if r["criterion_id"] == "EIP-CSII-DIABETES")
    assert diabetes["truth"] == "met"
    assert diabetes["evidence_references"] == ["Condition/cond-diabetes"]
    assert any(r["truth"] == "unknown" for r in rows)


def test_nothing_but_identifiers_codes_and_timings_is_stored(
    service: Flask, service_client: FlaskClient
) -> None:
    body = named_patient_request(INSULIN_PUMP + VANCOMYCIN_PUMP)
    answer = service_client.post(ORDER_SIGN, json=body).json
    dump = json.dumps(
        {
            name: _rows(service.extensions["cds_store"], table)
            for name, table in metadata.tables.items()
        },
        default=str,
    )
    assert PATIENT_NAME.split()[1] not in dump
    assert CONDITION_NOTE not in dump
    for card in answer["cards"]:
        assert card["summary"] not in dump
        assert card["detail"][:40] not in dump
    assert "C-peptide" not in dump  # criterion and evidence wording stays out
    assert '"resourceType"' not in dump


def test_a_call_without_decisions_still_records_its_cards(
    service: Flask, service_client: FlaskClient
) -> None:
    response = service_client.post(ORDER_SIGN, json=named_patient_request(NO_PUMP))
    assert response.status_code == 200
    assert response.json["cards"] == []
    store = service.extensions["cds_store"]
    (call,) = _rows(store, service_call)
    assert (call["decision_count"], call["card_count"]) == (0, 0)
    assert _rows(store, decision) == []


def test_rejected_calls_are_not_recorded(service: Flask, service_client: FlaskClient) -> None:
    body = named_patient_request(INSULIN_PUMP)
    body["prefetch"]["coverage"]["entry"] = []  # a CRD request without Coverage: 400
    response = service_client.post(ORDER_SIGN, json=body)
    assert response.status_code == 400
    assert _rows(service.extensions["cds_store"], service_call) == []


def test_audit_for_an_assertion_id(service: Flask, service_client: FlaskClient) -> None:
    answer = service_client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP)).json
    (assertion_id,) = set(_assertion_ids(answer).values())
    (report,) = audit_for_assertion(service.extensions["cds_store"], assertion_id)
    assert report["coverage_assertion_id"] == assertion_id
    assert report["orders"] == ["DeviceRequest/dr-insulin"]
    assert report["rule_id"] == "EIP-CSII"
    assert report["outcome"] == "conditional"
    assert [c["uuid"] for c in report["cards"]] == [c["uuid"] for c in answer["cards"]]
    assert {
        "criterion_id": "EIP-CSII-DIABETES",
        "truth": "met",
        "evidence": ["Condition/cond-diabetes"],
    }.items() <= next(
        c for c in report["criteria"] if c["criterion_id"] == "EIP-CSII-DIABETES"
    ).items()
    assert audit_for_assertion(service.extensions["cds_store"], "no-such-id") == []


def _unreachable(database_url: str, tmp_path: Path) -> str:
    """A URL of the same backend that cannot be opened (yet): a SQLite file in a missing
    folder, a PostgreSQL database not created."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'not-yet' / 'audit.sqlite3'}"
    return f"{database_url}_later"


def test_the_answer_goes_out_when_the_database_is_down(
    database_url: str,
    tmp_path: Path,
    make_service: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = make_service(DATABASE_URL=_unreachable(database_url, tmp_path))
    assert any("NOT AUDITED" in r.getMessage() for r in caplog.records)
    attempts: list[object] = []
    sa.event.listen(
        app.extensions["cds_store"].engine, "do_connect", lambda *args: attempts.append(args)
    )
    client = app.test_client()
    for _ in range(3):
        response = client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP))
        assert response.status_code == 200
        assert response.json["cards"]
    failures = [r for r in caplog.records if "AUDIT NOT RECORDED" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.levelno == logging.ERROR for r in failures)
    # Only the first call tried the database; the next ones were answered without waiting.
    assert len(attempts) == 1
    logged = "\n".join(caplog.text.splitlines())
    assert PATIENT_NAME.split()[1] not in logged
    assert CONDITION_NOTE not in logged


def test_recording_resumes_when_the_database_comes_back(
    database_url: str,
    tmp_path: Path,
    make_service: Callable[..., Flask],
    request: pytest.FixtureRequest,
) -> None:
    url = _unreachable(database_url, tmp_path)
    app = make_service(DATABASE_URL=url)
    app.extensions["cds_store"].retry_after_s = 0.0  # try again at the next call
    client = app.test_client()
    assert client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP)).status_code == 200
    server = None
    if url.startswith("sqlite"):
        (tmp_path / "not-yet").mkdir()
    else:
        server = request.getfixturevalue("postgres_server")
        server.create_database(url.rsplit("/", 1)[1])
    try:
        second = named_patient_request(INSULIN_PUMP)
        assert client.post(ORDER_SIGN, json=second).status_code == 200
        (call,) = _rows(app.extensions["cds_store"], service_call)
        assert call["hook_instance"] == second["hookInstance"]
    finally:
        app.extensions["cds_store"].dispose()
        if server is not None:
            server.drop_database(url)


def test_issued_cards_are_the_response_cards_with_the_decision_each_is_about(
    service: Flask,
) -> None:
    """The hook hands over every card it issued; none is read back from the response."""
    from hooks import SERVICES
    from hooks.request import ClinicalInput
    from hooks.service import HookEnvironment

    body = named_patient_request(INSULIN_PUMP)
    request = HookRequest(
        hook="order-sign",
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch=body["prefetch"],
    )
    environment = HookEnvironment(
        now=FIXED_NOW,
        new_uuid=service.extensions["cds_new_uuid"],
        payer_name="Plan",
        base_url="https://cds.example.org",
        policy=service.extensions["cds_policy"],
    )
    order_sign = SERVICES["infusion-pump-coverage-order-sign"]
    scope = order_sign.scope(request, {}, environment.policy, FIXED_NOW.date())
    clinical = ClinicalInput(data=body["prefetch"])
    result = order_sign.handler(request, scope, clinical, environment)
    cards = result.response["cards"]
    assert [c.uuid for c in result.cards] == [c["uuid"] for c in cards]
    assert [c.card_type for c in result.cards] == [c["source"]["topic"]["code"] for c in cards]
    for issued, card in zip(result.cards, cards, strict=True):
        assert issued.decision is not None
        decided = result.decisions[issued.decision]
        assert {o.reference for o in decided.episode.orders} == {
            a["reference"] for a in card["extension"]["davinci-crd.associated-resource"]
        }
    record = build_audit_record(
        service_id=order_sign.id,
        hook_request=request,
        client_iss=None,
        result=result,
        timings=CallTimings(0, 0, 0, 0),
        recorded_at=FIXED_NOW,
    )
    assert [c.card_uuid for c in record.cards] == [c["uuid"] for c in cards]
    (assertion_id,) = set(result.assertion_ids)
    assert [d.coverage_assertion_id for d in record.decisions] == [assertion_id] * len(
        result.decisions
    )


def _audit_record_with_everything() -> AuditRecord:
    """A record whose rows use every column type of the audit tables (times, dates, JSON
    lists, booleans, floats, NULLs, non-ASCII text)."""
    return AuditRecord(
        recorded_at=FIXED_NOW,
        service_id="infusion-pump-coverage-order-sign",
        hook="order-sign",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        client_iss="https://ehr.example.org/cds-client/é",
        crd_version="2.0",
        timings=CallTimings(prefetch=0.0012345, fetch=0.0, decide=0.002, total=0.0051),
        decisions=(
            DecisionRecord(
                coverage_assertion_id="a-1",
                order_references=("DeviceRequest/d1", "MedicationRequest/m1"),
                policy_id="MCS051.01",
                policy_version="2026-01",
                rule_id="indication-insulin",
                outcome="conditional",
                as_of=FIXED_NOW.date(),
                criteria=(
                    CriterionRecord("r1", "indication", "c1", "met", True, ("Condition/x",)),
                    CriterionRecord("r1", "indication", "c2", "unknown", False, (), False),
                ),
            ),
        ),
        cards=(
            CardRecord("u-1", "coverage", "info", ("s-1", "s-2"), 0),
            CardRecord("u-2", None, "warning", (), None),  # type: ignore[arg-type]
        ),
        decision_page_token="token-1",
    )


def _audit_record_with_two_decisions() -> AuditRecord:
    """Two decisions with their criteria, and cards on each and on the call."""
    one = _audit_record_with_everything()
    second = DecisionRecord(
        coverage_assertion_id="a-2",
        order_references=("DeviceRequest/d2",),
        policy_id="MCS051.01",
        policy_version="2026-01",
        rule_id="indication-vancomycin",
        outcome="not-covered",
        as_of=FIXED_NOW.date(),
        criteria=(
            CriterionRecord("r2", "indication", "c3", "unmet", True, ("Observation/o",)),
            CriterionRecord("r2", "requirement", "c4", "met", False, ("Encounter/e",)),
            CriterionRecord("r2", "guidance", "c5", "unknown", False, ()),
        ),
    )
    return dataclasses.replace(
        one,
        decisions=(one.decisions[0], second),
        cards=(
            CardRecord("u-1", "coverage", "info", ("s-1",), 1),
            CardRecord("u-2", "coverage", "warning", (), 0),
            CardRecord("u-3", None, "info", (), None),  # type: ignore[arg-type]
            CardRecord("u-4", "documentation", "info", ("s-2", "s-3"), 1),
        ),
        decision_page_token=None,
    )


RECORDS = (_audit_record_with_everything, _audit_record_with_two_decisions)
_AUDIT_TABLES = ("service_call", "decision", "criterion_result", "decision_page", "issued_card")


def _stored(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every audit row as SQLite holds it, each value with its storage class."""
    with sqlite3.connect(path) as connection:
        stored = {}
        for table in _AUDIT_TABLES:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            listed = ", ".join(f"{c}, typeof({c})" for c in columns)
            stored[table] = connection.execute(f"SELECT {listed} FROM {table}").fetchall()
        return stored


def _insert_with_sqlalchemy(connection: sa.Connection, rows: _AuditRows) -> int:
    """The audit write through SQLAlchemy's own statements, one per row set: what the
    service's inserts must store."""
    statements = {
        "call": service_call.insert().returning(service_call.c.id),
        "decision": decision.insert().returning(decision.c.id),
        "criteria": criterion_result.insert(),
        "cards": issued_card.insert(),
        "page": decision_page.insert(),
    }

    def insert_one(table: str, row: Any) -> int:
        return int(connection.execute(statements[table], dict(row)).scalar_one())

    def insert_many(table: str, many: list[dict[str, Any]]) -> None:
        connection.execute(statements[table], many)

    return _write_rows(rows, insert_one, insert_many)


WAYS = ("service call", "service inserts", "sqlalchemy")


def _written(store: Store, record: AuditRecord, way: str) -> None:
    """``record`` written on an empty ``store``: by the service (its own transaction), by
    its inserts in a SQLAlchemy transaction, or by SQLAlchemy's statements."""
    if way == "service call":
        assert record_service_call(store, record) == 1
        return
    insert = _insert_audit_rows if way == "service inserts" else _insert_with_sqlalchemy
    with store.transaction() as connection:
        assert insert(connection, _audit_rows(record)) == 1


@pytest.mark.parametrize("make_record", RECORDS)
def test_sqlite_stores_the_rows_sqlalchemy_would(
    tmp_path: Path, make_record: Callable[[], AuditRecord]
) -> None:
    """The SQLite write goes through the driver's cursor; what it stores is what the
    SQLAlchemy statements store, value for value and type for type."""
    stored = []
    for way in WAYS:
        path = tmp_path / f"{way}.sqlite3"
        store = open_store(f"sqlite:///{path}", str(tmp_path))
        store.migrate()
        _written(store, make_record(), way)
        store.dispose()
        stored.append(_stored(path))
    assert stored[0] == stored[1] == stored[2]
    assert stored[0]["issued_card"]
    assert stored[0]["criterion_result"]


def _stored_in_postgresql(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every audit row as PostgreSQL holds it, each value as text with its type."""
    stored = {}
    with store.reading() as connection:
        for table in _AUDIT_TABLES:
            columns = connection.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = :table ORDER BY ordinal_position"
                ),
                {"table": table},
            ).scalars()
            listed = ", ".join(f"{c}::text, pg_typeof({c})::text" for c in columns)
            query = f"SELECT {listed} FROM {table} ORDER BY 1"
            stored[table] = [tuple(row) for row in connection.exec_driver_sql(query)]
    return stored


@pytest.mark.parametrize("make_record", RECORDS)
def test_postgresql_stores_the_rows_sqlalchemy_would(
    postgres_server: PostgresServer, tmp_path: Path, make_record: Callable[[], AuditRecord]
) -> None:
    """On PostgreSQL the write is one statement taking the record as a JSON document; what
    it stores is what the SQLAlchemy statements store, value for value and type for type,
    ids included."""
    stored = []
    for way in WAYS:
        url = postgres_server.create_database()
        store = open_store(url, str(tmp_path))
        try:
            store.migrate()
            _written(store, make_record(), way)
            stored.append(_stored_in_postgresql(store))
        finally:
            store.dispose()
            postgres_server.drop_database(url)
    assert stored[0] == stored[1] == stored[2]
    assert stored[0]["issued_card"]
    assert stored[0]["criterion_result"]


def test_a_failed_insert_records_nothing_of_the_call(store: Store) -> None:
    """An insert the database refuses midway rolls back the whole call and counts as a
    database failure (writes pause), like any other."""
    cascade = " CASCADE" if store.backend == "postgresql" else ""  # feedback refers to it
    with store.transaction() as connection:
        connection.exec_driver_sql(f"DROP TABLE issued_card{cascade}")
    assert record_service_call(store, _audit_record_with_everything()) is None
    assert store.writes_suspended()
    assert _rows(store, service_call) == []
    assert _rows(store, decision) == []
