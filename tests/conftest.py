"""Shared test fixtures: the app with a pinned clock and uuids, the shared data folders."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SHARED = ROOT.parent / "shared"
FIXED_NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
ORDER_SIGN = "/cds-services/infusion-pump-coverage-order-sign"
ORDER_SELECT = "/cds-services/infusion-pump-coverage-order-select"
ORDER_DISPATCH = "/cds-services/infusion-pump-coverage-order-dispatch"


def sequential_uuids() -> Callable[[], str]:
    """Deterministic uuids (00000000-0000-4000-8000-000000000001, ...) for golden responses."""
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(counter):012d}"


def sequential_page_tokens() -> Callable[[], str]:
    """Deterministic decision page ids for golden responses."""
    counter = itertools.count(1)
    return lambda: f"decision-page-{next(counter):032d}"


_APPS: list[Flask] = []


def make_app(config: dict[str, Any] | None = None) -> Flask:
    """The service with development auth, a fixed clock and sequential uuids.

    Its feedback/audit store is an in-memory SQLite database unless ``config`` names one
    (``DATABASE_URL``); stores are closed after each test.
    """
    settings = {
        "AUTH": "optional",
        "PAYER_NAME": "Example Medicare Advantage Plan",
        "DATABASE_URL": "sqlite://",
        # Tests and benchmarks call from one address many times a second.
        "RATE_LIMIT_PER_S": 0,
        **(config or {}),
    }
    app = create_app(
        settings,
        clock=lambda: FIXED_NOW,
        new_uuid=sequential_uuids(),
        new_page_token=sequential_page_tokens(),
    )
    _APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def _close_app_stores() -> Iterator[None]:
    """Close the database connections of every app ``make_app`` built during the test."""
    yield
    while _APPS:
        _APPS.pop().extensions["cds_store"].dispose()


@pytest.fixture
def app() -> Flask:
    """The service as the golden tests see it."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of that service."""
    return app.test_client()


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared (Synthea records, CRD examples) is not present")
    return SHARED
