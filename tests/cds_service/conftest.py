"""Fixtures for the service package: local FHIR servers and the pooled HTTP session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cds_service.fhir_client import close_shared_session
from tests.misbehaving_fhir_server import MisbehavingFhirServer


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


@pytest.fixture
def elsewhere() -> Iterator[MisbehavingFhirServer]:
    """A second local server (another port), where no query or token may ever land."""
    with MisbehavingFhirServer() as server:
        yield server
