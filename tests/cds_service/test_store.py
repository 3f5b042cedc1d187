"""The store: database URLs, connection settings, versioned migrations, start-up."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_service.audit import _driver_inserts, write_audit_record
from cds_service.config import ConfigError
from cds_service.migrations import MIGRATIONS
from cds_service.store import SQLITE_FILE_NAME, Store, open_store, resolve_database_url
from cds_service.tables import (
    criterion_result,
    decision,
    issued_card,
    metadata,
    schema_version,
    service_call,
)
from tests.cds_service.store_workers import migrate_in_process, synthetic_record
from tests.conftest import make_app


def test_default_database_is_a_sqlite_file_in_the_instance_folder(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    url = resolve_database_url("", str(instance))
    assert url.get_backend_name() == "sqlite"
    assert url.database == str(instance / SQLITE_FILE_NAME)
    assert instance.is_dir()


@pytest.mark.parametrize("given", ["postgresql://u@db/cds", "postgres://u@db/cds"])
def test_postgresql_urls_use_psycopg_3(given: str) -> None:
    assert resolve_database_url(given, "/unused").drivername == "postgresql+psycopg"


@pytest.mark.parametrize("given", ["mysql://u@db/cds", "not a url"])
def test_other_databases_are_refused_at_start_up(given: str) -> None:
    with pytest.raises(ConfigError):
        resolve_database_url(given, "/unused")


def test_connection_settings(store: Store) -> None:
    with store.engine.connect() as connection:
        if store.backend == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            assert store.engine.driver == "psycopg"
            name = connection.exec_driver_sql("SHOW application_name").scalar()
            assert name == "infusion-pump-cds"


def test_migration_creates_the_schema_the_queries_use(store: Store) -> None:
    inspector = sa.inspect(store.engine)
    assert set(inspector.get_table_names()) == set(metadata.tables)
    for table in metadata.tables.values():
        reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(reflected) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert reflected[column.name]["nullable"] == column.nullable, (table.name, column.name)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= indexes, table.name
    replay_key = inspector.get_pk_constraint("jwt_replay")["constrained_columns"]
    assert sorted(replay_key) == ["iss", "jti"]


def test_each_step_is_recorded_once_and_migrating_again_changes_nothing(store: Store) -> None:
    assert store.migrate() == MIGRATIONS[-1].version
    with store.reading() as connection:
        rows = connection.execute(
            sa.select(schema_version.c.version, schema_version.c.description).order_by(
                schema_version.c.version
            )
        ).all()
    assert rows == [(m.version, m.description) for m in MIGRATIONS]


def test_an_old_database_is_upgraded_step_by_step(database_url: str, tmp_path: Path) -> None:
    old = open_store(database_url, str(tmp_path))
    old.migrations = MIGRATIONS[:1]
    assert old.migrate() == 1
    assert "jwt_replay" not in sa.inspect(old.engine).get_table_names()
    old.dispose()
    current = open_store(database_url, str(tmp_path))
    try:
        assert current.migrate() == MIGRATIONS[-1].version
        assert "jwt_replay" in sa.inspect(current.engine).get_table_names()
    finally:
        current.dispose()


def test_processes_starting_together_apply_each_step_once(database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        versions = pool.map(migrate_in_process, [database_url] * 4)
    assert versions == [MIGRATIONS[-1].version] * 4
    checked = open_store(database_url, "/unused")
    try:
        with checked.engine.connect() as connection:
            applied = connection.execute(sa.select(schema_version.c.version)).scalars().all()
        assert sorted(applied) == [m.version for m in MIGRATIONS]
    finally:
        checked.dispose()


def test_the_service_keeps_its_default_database_in_its_instance_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = tmp_path / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(instance))
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    app = make_app({"DATABASE_URL": ""})
    store = app.extensions["cds_store"]
    assert app.instance_path == str(instance)
    assert store.engine.url.database == str(instance / SQLITE_FILE_NAME)
    assert (instance / SQLITE_FILE_NAME).is_file()
    with store.reading() as connection:
        assert connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() == (
            MIGRATIONS[-1].version
        )


def test_a_reader_never_holds_up_a_writer(store: Store) -> None:
    with store.reading() as reader:
        assert reader.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar()
        started = time.perf_counter()
        with store.transaction() as writer:
            write_audit_record(writer, synthetic_record("while-reading"))
        assert time.perf_counter() - started < 2.0


def test_audit_sync_full_fsyncs_every_sqlite_commit(tmp_path: Path) -> None:
    """``CDS_AUDIT_SYNC=full``: every commit is fsynced (rows survive a power loss)."""
    store = open_store(f"sqlite:///{tmp_path / 'full.sqlite3'}", str(tmp_path), "full")
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        store.dispose()


def test_audit_sync_is_normal_or_full() -> None:
    from cds_service.settings import Settings

    assert Settings.load({}, environ={}).audit_sync == "normal"
    assert Settings.load({}, environ={"CDS_AUDIT_SYNC": "full"}).audit_sync == "full"
    with pytest.raises(ConfigError):
        Settings.load({}, environ={"CDS_AUDIT_SYNC": "off"})


def test_start_up_warms_the_audit_write_and_leaves_no_row(tmp_path: Path) -> None:
    """The audit statements are compiled at start-up by a write that is rolled back
    (on SQLite, the inserts its driver runs)."""
    store = open_store(f"sqlite:///{tmp_path / 'warm.sqlite3'}", str(tmp_path))
    try:
        store.migrate()
        before = _driver_inserts.cache_info().currsize
        store.migrate_at_startup()
        assert _driver_inserts.cache_info().currsize == before + 1  # this engine's inserts
        with store.reading() as connection:
            for table in (service_call, decision, criterion_result, issued_card):
                count = sa.select(sa.func.count()).select_from(table)
                assert connection.execute(count).scalar_one() == 0
    finally:
        store.dispose()
