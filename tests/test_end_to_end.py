"""Every request in fixtures/requests/ gets its golden response in fixtures/responses/.

The clock and uuids are pinned (tests/conftest.py), so a response is compared exactly.
The outcome word at the end of a fixture's name says what it expects: ``covered``,
``not-covered`` or ``conditional`` for every coverage-information extension,
``out-of-scope`` for no decision at all, ``rejected`` for a 400 answer.

After an intended change, rewrite the goldens and review the diff:
``UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_end_to_end.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, load_json, make_app
from tests.response_validation import validate_cds_response

REQUESTS = sorted((FIXTURES / "requests").glob("*.json"))
EXTENSION = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
STATUS_BY_OUTCOME = {"rejected": 400}


def service_path(request_file: Path) -> str:
    hook = request_file.name.split("__")[0]
    return f"/cds-services/infusion-pump-coverage-{hook}"


def expected_outcome(request_file: Path) -> str:
    return request_file.stem.split("__")[-1]


def coverage_outcomes(body: dict[str, Any]) -> list[str]:
    """The ``covered`` code of every coverage-information extension in the system actions."""
    return [
        part["valueCode"]
        for action in body.get("systemActions", [])
        for extension in action["resource"].get("extension", [])
        if extension["url"] == EXTENSION
        for part in extension["extension"]
        if part["url"] == "covered"
    ]


def test_fixture_names_follow_the_convention() -> None:
    assert REQUESTS, "fixtures/requests is empty"
    for request_file in REQUESTS:
        hook, order, outcome = request_file.stem.split("__")
        assert hook in ("order-sign", "order-select", "order-dispatch")
        assert order
        assert outcome in ("covered", "not-covered", "conditional", "out-of-scope", "rejected")


@pytest.mark.parametrize("request_file", REQUESTS, ids=lambda p: p.stem)
def test_request_gets_its_golden_response(request_file: Path) -> None:
    client = make_app().test_client()
    response = client.post(
        service_path(request_file), data=request_file.read_bytes(), content_type="application/json"
    )
    outcome = expected_outcome(request_file)
    assert response.status_code == STATUS_BY_OUTCOME.get(outcome, 200), response.get_data(
        as_text=True
    )
    body = response.get_json()
    if response.status_code == 200:
        request_body = load_json(request_file)
        version = request_body.get("extension", {}).get("davinci-crd.requestedVersion", "2.0")
        validate_cds_response(body, crd_version=version, hook=request_body["hook"])
    golden = FIXTURES / "responses" / request_file.name
    if os.environ.get("UPDATE_GOLDENS"):
        golden.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    assert body == load_json(golden)
    if outcome in ("covered", "not-covered", "conditional"):
        outcomes = coverage_outcomes(body)
        if "no-coverage" in request_file.stem:
            assert outcomes == []  # no Coverage to record a decision against
        else:
            assert outcomes
            assert set(outcomes) == {outcome}
    elif outcome == "out-of-scope":
        assert body == {"cards": []}
