"""A decision derives only the record facts its policy may read, and decides exactly as it
would on every fact: same cards, same system actions, same audit rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fhir_mappings.facts
import hooks.decide
from cds_service.tables import criterion_result, decision
from tests.conftest import FIXTURES, make_app
from tests.test_end_to_end import service_path

REQUESTS = sorted(
    path
    for path in (FIXTURES / "requests").glob("*.json")
    if not path.stem.endswith(("rejected", "out-of-scope"))
)


def _answer(request_file: Path) -> tuple[int, Any, list[Any]]:
    app = make_app()
    response = app.test_client().post(
        service_path(request_file), data=request_file.read_bytes(), content_type="application/json"
    )
    store = app.extensions["cds_store"]
    with store.engine.connect() as connection:
        rows = [
            tuple(row)
            for table in (decision, criterion_result)
            for row in connection.execute(
                sa.select(*[c for c in table.c if c.name not in ("id", "decision_id", "call_id")])
            )
        ]
    return response.status_code, response.get_json(), rows


@pytest.mark.parametrize("request_file", REQUESTS, ids=lambda p: p.stem)
def test_deciding_on_the_facts_it_may_read_is_deciding_on_all(
    request_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    derived: list[int] = []
    original = fhir_mappings.facts._record_facts

    def counting(*args: Any) -> Any:
        producers = original(*args)
        return [(names, _counted(derive, derived)) for names, derive in producers]

    monkeypatch.setattr(fhir_mappings.facts, "_record_facts", counting)
    on_what_it_reads = _answer(request_file)
    read_when_wanted = len(derived)
    derived.clear()
    with monkeypatch.context() as everything:
        everything.setattr(hooks.decide, "facts_for_episode", _on_every_fact)
        on_everything = _answer(request_file)
    assert on_what_it_reads == on_everything
    assert read_when_wanted <= len(derived)


def _on_every_fact(*args: Any) -> Any:
    return fhir_mappings.facts.facts_for_episode(*args[:7], wanted=None)


def _counted(derive: Any, derived: list[int]) -> Any:
    def call() -> Any:
        derived.append(1)
        return derive()

    return call


def test_an_insulin_pump_order_derives_no_spasticity_or_implant_facts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names: list[str] = []
    original = fhir_mappings.facts._record_facts

    def recording(*args: Any) -> Any:
        producers = original(*args)
        return [(given, _named(derive, given, names)) for given, derive in producers]

    monkeypatch.setattr(fhir_mappings.facts, "_record_facts", recording)
    status, _, _ = _answer(FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json")
    assert status == 200
    assert "lab.hba1c_percent" in names or "patient.conditions" in names
    assert "med.oral_antispasmodic_trial_days" not in names
    assert "lab.body_weight_kg" not in names


def _named(derive: Any, given: tuple[str, ...], names: list[str]) -> Any:
    def call() -> Any:
        names.extend(given)
        return derive()

    return call
