"""Fixtures for the service package.

Local FHIR servers (well- and badly-behaved), a local JWKS host, and the pooled HTTP
session; and the feedback/audit store, on which every store test runs twice: SQLite and
PostgreSQL.

PostgreSQL is a real server: the one ``CDS_TEST_DATABASE_URL`` names (a superuser URL;
each test creates its own database there), else a throwaway cluster these fixtures
start from the local PostgreSQL binaries. Without binaries the PostgreSQL variants are
skipped, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.fhir_client import close_shared_session
from cds_service.store import Store, open_store
from tests.conftest import make_app
from tests.misbehaving_fhir_server import MisbehavingFhirServer
from tests.postgres_cluster import (
    PostgresCluster,
    PostgresServer,
    PostgresUnavailable,
    find_postgres_bin,
)

BACKENDS = ("sqlite", "postgresql")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: ``CDS_TEST_DATABASE_URL``, else our own cluster."""
    configured = os.environ.get("CDS_TEST_DATABASE_URL")
    if configured:
        yield PostgresServer(configured)
        return
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        reason = (
            "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian package "
            "'postgresql' or set CDS_TEST_DATABASE_URL"
        )
        if _in_ci():
            pytest.fail(f"CI must test on PostgreSQL: {reason}")
        pytest.skip(reason)
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        cluster.stop()
        if _in_ci():
            pytest.fail(f"CI must test on PostgreSQL: {exc}")
        pytest.skip(f"could not start a throwaway PostgreSQL server: {exc}")
    try:
        yield PostgresServer(cluster.admin_url)
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A new, empty database URL: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def store(database_url: str, tmp_path: Any) -> Iterator[Store]:
    """The store on that database, migrated to the latest schema."""
    opened = open_store(database_url, str(tmp_path / "instance"))
    opened.migrate()
    yield opened
    opened.dispose()


@pytest.fixture
def make_service(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build the service (``tests.conftest.make_app``) on that database; closed afterwards."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        app = make_app({"DATABASE_URL": database_url, **config})
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["cds_store"].dispose()


@pytest.fixture
def service(make_service: Callable[..., Flask]) -> Flask:
    """The service recording to that database."""
    return make_service()


@pytest.fixture
def service_client(service: Flask) -> FlaskClient:
    """A test client of that service."""
    return service.test_client()


@pytest.fixture(autouse=True)
def pooled_session_closed() -> Iterator[None]:
    """Close the process's pooled FHIR session after each test, so no socket outlives it."""
    yield
    close_shared_session()


@pytest.fixture
def fhir_faults() -> Iterator[MisbehavingFhirServer]:
    """A local server playing a FHIR server, well or badly depending on the base URL."""
    with MisbehavingFhirServer(slow_s=10) as server:
        yield server


@dataclass
class JwksServer:
    """A local HTTP server publishing JWK Sets at paths; counts fetches per path."""

    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetches: dict[str, int] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        if self.server is None:
            raise RuntimeError("not started")
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    """A JWKS host on loopback; tests put key sets at paths and count the fetches."""
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet."""

        def do_GET(self) -> None:  # noqa: N802
            state.fetches[self.path] = state.fetches.get(self.path, 0) + 1
            body = json.dumps(state.sets.get(self.path, {"keys": []})).encode()
            self.send_response(200 if self.path in state.sets else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def elsewhere() -> Iterator[MisbehavingFhirServer]:
    """A second local server (another port), where no query or token may ever land."""
    with MisbehavingFhirServer() as server:
        yield server
