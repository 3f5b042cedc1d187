"""The feedback/audit database: which one, how to connect, and bringing its schema up to date.

``CDS_DATABASE_URL`` (setting ``DATABASE_URL``) names it as a SQLAlchemy URL:

- empty (the default): a SQLite file ``infusion-pump-cds.sqlite3`` in the Flask instance
  folder, in WAL mode with a busy timeout, for one host (several worker processes);
- ``postgresql://...`` (run with the psycopg 3 driver): for several hosts or replicas;
- ``sqlite://``: an in-memory database, gone when the process ends (tests, ``evaluate``).

The schema is brought up to date at start-up by the ``cds_service.migrations`` steps, in
one transaction that holds a database-wide lock (PostgreSQL advisory lock, SQLite
``BEGIN IMMEDIATE``), so several processes starting together apply each step once. If the
database cannot be reached at start-up the service still starts and answers; the
migration is retried before the next write.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from cds_service.config import ConfigError
from cds_service.migrations import MIGRATIONS, Migration
from cds_service.tables import schema_version

if TYPE_CHECKING:
    from cds_service.audit import AuditRecord

logger = logging.getLogger(__name__)

SQLITE_FILE_NAME = "infusion-pump-cds.sqlite3"
# How long a SQLite writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_MS = 5000
# How long to wait for a PostgreSQL connection before the write is given up.
POSTGRESQL_CONNECT_TIMEOUT_S = 3
# After a failed audit write, calls are answered without trying the database for this
# long, so an unreachable server does not add its timeout to every clinical answer.
AUDIT_RETRY_AFTER_S = 10.0
# pg_advisory_xact_lock key serialising schema migrations across processes and hosts.
MIGRATION_LOCK_KEY = 0x1CD5_5C4E_0001
# Execution option marking a connection that only reads.
READ_ONLY = "cds_read_only"


def resolve_database_url(configured: str, instance_path: str) -> URL:
    """The URL to connect to: the configured one (PostgreSQL with psycopg 3), else the
    SQLite file in the instance folder (created if needed)."""
    if not configured:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite", database=str(Path(instance_path) / SQLITE_FILE_NAME))
    try:
        url = make_url(configured)
    except ArgumentError as exc:
        raise ConfigError("CDS_DATABASE_URL is not a database URL") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError("CDS_DATABASE_URL must name a SQLite or PostgreSQL database")
    return url


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


# CDS_AUDIT_SYNC -> SQLite's synchronous setting (in WAL mode). Both keep every committed
# row when a process is killed (the WAL is written before COMMIT returns); "full" also
# fsyncs the WAL at every commit, so rows survive a power loss or OS crash too.
SQLITE_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode. Switching takes an exclusive lock, and SQLite can
    refuse it at once ("database is locked") while another process opening the same new
    file holds one, without waiting for busy_timeout: so wait here, up to that timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _sqlite_on_connect_with(synchronous: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the pysqlite driver's own
        # transaction handling would defer it and break transactional DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS[synchronous]}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return on_connect


# Rewrites the latest schema version row as it is.
_WRITE_CHANGING_NOTHING = (
    "UPDATE schema_version SET version = version"
    " WHERE version = (SELECT MAX(version) FROM schema_version)"
)


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that reads and then
    # writes can fail at once with "database is locked" instead of waiting for busy_timeout.
    # Readers (``Store.reading``) never block writers in WAL mode.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    # On the driver's connection itself: the same statement, without SQLAlchemy's cost.
    driver = connection.connection.driver_connection
    driver.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")  # type: ignore[union-attr]


def create_store_engine(url: URL, sync: str = "normal") -> Engine:
    """An engine for ``url`` with the settings the store relies on; ``sync`` is
    ``CDS_AUDIT_SYNC`` (SQLite only: PostgreSQL commits as its server is configured)."""
    try:
        if url.get_backend_name() == "sqlite":
            options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
            if _is_memory(url):
                options["poolclass"] = StaticPool  # one connection: one in-memory database
            engine = sa.create_engine(url, hide_parameters=True, **options)
            event.listen(engine, "connect", _sqlite_on_connect_with(sync))
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        return sa.create_engine(
            url,
            hide_parameters=True,  # error messages and logs never show row values
            pool_pre_ping=True,  # survive a database restart between calls
            connect_args={
                "connect_timeout": POSTGRESQL_CONNECT_TIMEOUT_S,
                "application_name": "infusion-pump-cds",
            },
        )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError("CDS_DATABASE_URL cannot be used: unknown driver or options") from exc


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Store:
    """The database behind feedback, the audit trail and the JWT replay cache."""

    def __init__(self, engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.engine = engine
        self.migrations = migrations
        self._schema_ready = False
        self._lock = threading.Lock()
        self.retry_after_s = AUDIT_RETRY_AFTER_S
        self._writes_resume_at = 0.0
        # A worker forked from the process that migrated must not reuse its connections.
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _dispose_in_child(reference))

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def in_memory(self) -> bool:
        return _is_memory(self.engine.url)

    def describe(self) -> str:
        """The URL without its password, for logs and the command line."""
        return self.engine.url.render_as_string(hide_password=True)

    def latest_version(self) -> int:
        return max((m.version for m in self.migrations), default=0)

    def migrate(self, now: datetime | None = None) -> int:
        """Apply every step the database lacks; return the schema version it is at."""
        applied_at = now or _utc_now()
        with self._lock, self.engine.begin() as connection:
            if self.backend == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            schema_version.create(connection, checkfirst=True)
            current = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            current = int(current or 0)
            for migration in self.migrations:
                if migration.version <= current:
                    continue
                migration.apply(connection)
                connection.execute(
                    schema_version.insert().values(
                        version=migration.version,
                        description=migration.description,
                        applied_at=applied_at,
                    )
                )
                logger.info(
                    "database schema upgraded to version %d (%s)",
                    migration.version,
                    migration.description,
                )
                current = migration.version
            if current > self.latest_version():
                logger.warning(
                    "database schema version %d is newer than this service knows (%d)",
                    current,
                    self.latest_version(),
                )
        self._schema_ready = True  # only once the transaction has committed
        return current

    def migrate_at_startup(self) -> None:
        """Migrate, or log why not and leave it to the first write (the service answers
        without a database)."""
        try:
            version = self.migrate()
        except SQLAlchemyError as exc:
            logger.error(
                "feedback/audit database %s unavailable at start-up (%s); service calls are "
                "answered but NOT AUDITED until it is reachable",
                self.describe(),
                type(exc).__name__,
                exc_info=exc,
            )
            return
        logger.info("feedback/audit database %s at schema version %d", self.describe(), version)
        self.warm_up()
        if not self.in_memory:
            # Start forked workers with an empty pool.
            self.engine.dispose()

    def warm_up(self, record: AuditRecord | None = None) -> None:
        """Open a pooled connection and compile the audit write's statements now (the
        engine caches them, and forked workers inherit the cache), by writing ``record``
        (a made-up one when None) in a transaction that is rolled back. On PostgreSQL
        only the connection is opened: rolled-back inserts would still take ids. Nothing
        is tried when the database was unreachable at start-up."""
        from cds_service.audit import warm_up_write

        if not self._schema_ready:
            return
        try:
            with self.engine.connect() as connection:
                if self.backend != "sqlite":
                    return
                transaction = connection.begin()
                try:
                    warm_up_write(connection, record)
                finally:
                    transaction.rollback()
            # A process's first commit (re)starts the write-ahead log: make it here, with
            # a write that changes nothing.
            with self.sqlite_write() as driver:
                driver.execute(_WRITE_CHANGING_NOTHING)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # the first real write does it instead
            logger.warning("audit write not warmed up: %s", type(exc).__name__)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction on an up-to-date schema, committed when the block ends."""
        if not self._schema_ready:
            self.migrate()
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def sqlite_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the SQLite driver's own connection, taken from the
        engine's pool: ``BEGIN IMMEDIATE`` (as ``transaction`` begins one), committed when
        the block ends, rolled back when it raises. For the audit write, which answers
        every service call: it skips SQLAlchemy's connection and transaction objects."""
        if not self._schema_ready:
            self.migrate()
        pooled = self.engine.raw_connection()
        try:
            driver: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                driver.rollback()
                raise
            driver.commit()
        finally:
            pooled.close()  # back to the pool

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for queries (commands, lookups)."""
        if not self._schema_ready:
            self.migrate()
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as connection:
            yield connection

    def writes_suspended(self) -> bool:
        """Whether a recent write failed and the back-off has not yet passed."""
        return time.monotonic() < self._writes_resume_at

    def suspend_writes(self) -> None:
        """After a failed write: leave the database alone for ``retry_after_s``."""
        self._writes_resume_at = time.monotonic() + self.retry_after_s

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _dispose_in_child(reference: weakref.ref[Store]) -> None:
    store = reference()
    if store is not None:
        store.engine.dispose(close=False)


def open_store(configured_url: str, instance_path: str, sync: str = "normal") -> Store:
    """The store a deployment is configured with, schema not yet migrated."""
    url = resolve_database_url(configured_url, instance_path)
    return Store(create_store_engine(url, sync))
