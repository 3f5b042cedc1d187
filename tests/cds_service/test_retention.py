"""Audit retention (``cds_service.retention``): purging by date, the background sweep,
expired JWT ids; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_service.retention import RetentionSweeper, purge_audit, purge_expired_jwt_ids
from cds_service.smart_sessions import load_session, new_session, purge_expired_sessions
from cds_service.store import Store
from cds_service.tables import (
    criterion_result,
    decision,
    feedback,
    issued_card,
    jwt_replay,
    service_call,
    smart_app_session,
)
from tests.builders import INSULIN_PUMP, VANCOMYCIN_PUMP, named_patient_request
from tests.conftest import FIXED_NOW, ORDER_SIGN, make_app

OLD = datetime(2015, 3, 1, 12, 0, tzinfo=UTC)
NEW = FIXED_NOW


def _service(database_url: str, **config: object) -> Flask:
    """The service on that database, its clock at NEW (closed after the test)."""
    return make_app({"DATABASE_URL": database_url, **config})


def _record(app: Flask, orders: list[dict[str, object]], *, with_feedback: bool) -> None:
    client = app.test_client()
    answer = client.post(ORDER_SIGN, json=named_patient_request(orders)).json
    if with_feedback:
        card = answer["cards"][0]
        entry = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-28T15:00:00Z",
            "overrideReason": {"userComment": "x"},
        }
        assert client.post(f"{ORDER_SIGN}/feedback", json={"feedback": [entry]}).status_code == 200


def _counts(store: Store) -> dict[str, int]:
    with store.reading() as connection:
        return {
            table.name: int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
            for table in (service_call, decision, criterion_result, issued_card, feedback)
        }


@pytest.fixture
def old_and_new(database_url: str) -> Store:
    """Two calls recorded in 2015 (one with feedback), one in 2026; the store they share.

    (Decided now and dated back: the policy was not in effect in 2015.)"""
    app = _service(database_url)
    store: Store = app.extensions["cds_store"]
    _record(app, VANCOMYCIN_PUMP, with_feedback=True)
    _record(app, INSULIN_PUMP, with_feedback=False)
    with store.transaction() as connection:
        connection.execute(sa.update(service_call).values(recorded_at=OLD))
    _record(app, INSULIN_PUMP, with_feedback=True)
    return store


def test_purge_removes_only_what_is_older(old_and_new: Store) -> None:
    store = old_and_new
    before = _counts(store)
    dry = purge_audit(store, datetime(2020, 1, 1, tzinfo=UTC), dry_run=True)
    assert _counts(store) == before  # a dry run removes nothing
    assert (dry.service_calls, dry.feedback) == (2, 1)
    removed = purge_audit(store, datetime(2020, 1, 1, tzinfo=UTC), batch_size=1)
    assert removed == dry
    after = _counts(store)
    assert after["service_call"] == before["service_call"] - 2 == 1
    assert after["feedback"] == before["feedback"] - 1 == 1
    assert after["decision"] == before["decision"] - removed.decisions
    assert after["criterion_result"] == before["criterion_result"] - removed.criteria > 0
    assert after["issued_card"] == before["issued_card"] - removed.cards > 0
    with store.reading() as connection:
        (kept,) = connection.execute(sa.select(service_call.c.recorded_at)).scalars()
    assert kept == NEW
    assert purge_audit(store, datetime(2020, 1, 1, tzinfo=UTC)).service_calls == 0


def test_expired_jwt_ids_are_dropped(store: Store) -> None:
    with store.transaction() as connection:
        connection.execute(
            jwt_replay.insert(),
            [
                {"iss": "https://ehr", "jti": "gone", "expires_at": NEW - timedelta(minutes=1)},
                {"iss": "https://ehr", "jti": "live", "expires_at": NEW + timedelta(minutes=5)},
            ],
        )
    assert purge_expired_jwt_ids(store, NEW, dry_run=True) == 1
    assert purge_expired_jwt_ids(store, NEW) == 1
    with store.reading() as connection:
        assert list(connection.execute(sa.select(jwt_replay.c.jti)).scalars()) == ["live"]


def test_the_service_sweeps_past_retention_by_itself(old_and_new: Store, database_url: str) -> None:
    """Calls older than CDS_AUDIT_RETENTION_DAYS go after a request, in the background."""
    app = _service(database_url, AUDIT_RETENTION_DAYS=365)
    sweeper: RetentionSweeper = app.extensions["cds_retention"]
    expired: list[datetime] = []
    sweeper.expiring.append(lambda now: expired.append(now) or 0)
    sweeper._next = 0.0  # due now, as an hour after start would be
    assert app.test_client().get("/cds-services").status_code == 200
    sweeper.wait(30)
    assert _counts(old_and_new)["service_call"] == 1
    assert expired == [NEW]
    # Not again before the interval has passed.
    app.test_client().get("/cds-services")
    sweeper.wait(30)
    assert expired == [NEW]


def test_no_sweep_on_an_in_memory_store() -> None:
    assert "cds_retention" not in make_app({"DATABASE_URL": "sqlite://"}).extensions


def test_retention_must_be_positive() -> None:
    from cds_service.config import ConfigError
    from cds_service.settings import Settings

    with pytest.raises(ConfigError, match="AUDIT_RETENTION_DAYS"):
        Settings.load(environ={"CDS_AUDIT_RETENTION_DAYS": "0"})
    assert Settings.load(environ={"CDS_AUDIT_RETENTION_DAYS": "30"}).audit_retention_days == 30


def test_the_sweep_removes_expired_documentation_app_sessions(database_url: str) -> None:
    """An expired session (it holds the user's EHR access token) goes with the sweep,
    without waiting for the next launch."""
    app = _service(database_url)
    store: Store = app.extensions["cds_store"]
    live = new_session(store, {"stage": "authorizing"}, NEW - timedelta(seconds=1))
    # Started earlier, begun last: no later launch removes it.
    expired = new_session(store, {"stage": "authorizing"}, NEW - timedelta(hours=9))
    sweeper: RetentionSweeper = app.extensions["cds_retention"]
    assert sweeper.sweep() is not None
    assert load_session(store, live.id, NEW) is not None
    with store.reading() as connection:
        assert (
            connection.execute(
                sa.select(sa.func.count()).select_from(smart_app_session)
            ).scalar_one()
            == 1
        )
    assert load_session(store, expired.id, NEW - timedelta(hours=9)) is None
    assert purge_expired_sessions(store, NEW + timedelta(hours=1)) == 1
