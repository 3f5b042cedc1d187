"""Decisions on real-shaped data: every Synthea record × every pump order the policy
names, against the committed summary ``tests/corpus_summary.tsv``.

Any change in a decision on real data shows up as a diff of that file in review. After a
deliberate change (new rules, new mappings), regenerate it from the repository root:

    .venv/bin/python -m tests.corpus --write

and commit the new summary with the change. ``python -m tests.corpus`` without
``--write`` prints the diff. Both print the totals per outcome, as this test does.
Skipped when ``../shared/synthea-r4`` is absent.
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from hooks.service import PATIENT_PREFETCH
from tests.builders import (
    PUMP_ORDERS,
    order_sign_request,
    patient_and_coverage_prefetch,
    pump_order_resources,
)
from tests.conftest import ORDER_SIGN, make_app
from tests.corpus import (
    SUMMARY,
    SummaryRow,
    decide_corpus,
    record_prefetch,
    render_summary,
    summarize_response,
    summary_diff,
    synthea_records,
    totals,
)


@pytest.fixture
def synthea_dir(shared_dir: Path) -> Path:
    """``../shared/synthea-r4``; the tests are skipped when it is not there."""
    folder = shared_dir / "synthea-r4"
    if not folder.is_dir() or not synthea_records(folder):
        pytest.skip("../shared/synthea-r4 (Synthea records) is not present")
    return folder


@cache
def _decided(folder: Path) -> tuple[SummaryRow, ...]:
    return tuple(decide_corpus(folder))


@pytest.fixture
def corpus_rows(synthea_dir: Path) -> tuple[SummaryRow, ...]:
    """Every record × every pump order, decided once per test session (about 30 s)."""
    return _decided(synthea_dir)


def test_every_record_gets_every_order(
    synthea_dir: Path, corpus_rows: tuple[SummaryRow, ...]
) -> None:
    """One row per record and order: each request was answered with HTTP 200."""
    records = synthea_records(synthea_dir)
    assert len(corpus_rows) == len(records) * len(PUMP_ORDERS)
    assert {row.patient for row in corpus_rows} == {path.name for path in records}


def test_outcomes_match_the_committed_summary(
    corpus_rows: tuple[SummaryRow, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """The outcome per record and order is the one ``tests/corpus_summary.tsv`` records."""
    with capsys.disabled():
        print(f"\nSynthea corpus totals: {totals(corpus_rows)}")
    expected = SUMMARY.read_text(encoding="utf-8") if SUMMARY.exists() else ""
    diff = summary_diff(expected, render_summary(corpus_rows))
    if diff:
        pytest.fail(
            "decisions on the Synthea corpus changed; if that is intended, run "
            "`.venv/bin/python -m tests.corpus --write` and commit tests/corpus_summary.tsv\n"
            + diff,
            pytrace=False,
        )


# -- the summary machinery, on made-up data (runs without ../shared) ----------------------


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def test_record_prefetch_fills_every_template_key() -> None:
    """Resources by prefetch key with their urn:uuid full URLs; only the LOINC codes the
    template asks for; the 100 most recent encounters; one synthesized Coverage."""
    patient = {"resourceType": "Patient", "id": "p1"}
    hba1c = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": "urn:uuid:p1"},
    }
    heart_rate = {
        **hba1c,
        "id": "o2",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    }
    encounters = [
        {
            "resourceType": "Encounter",
            "id": f"e{i:03d}",
            "period": {"start": f"{1900 + i}-01-01T08:00:00Z"},
        }
        for i in range(105)
    ]
    claim = {"resourceType": "Claim", "id": "c1"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r) for r in (patient, hba1c, heart_rate, *encounters, claim)],
    }
    patient_id, prefetch = record_prefetch(bundle)
    assert patient_id == "p1"
    assert set(prefetch) == set(PATIENT_PREFETCH)
    assert prefetch["patient"] == patient
    assert [e["fullUrl"] for e in prefetch["observations"]["entry"]] == ["urn:uuid:o1"]
    kept = [e["resource"]["id"] for e in prefetch["encounters"]["entry"]]
    assert kept == [f"e{i:03d}" for i in range(104, 4, -1)]
    (coverage,) = [e["resource"] for e in prefetch["coverage"]["entry"]]
    assert (coverage["status"], coverage["beneficiary"]) == ("active", {"reference": "Patient/p1"})
    assert prefetch["questionnaireResponses"]["entry"] == []


def test_summarize_response_reads_rules_and_outcome() -> None:
    """The outcome from coverage-information; the indication then each requirement rule,
    as the audit trail recorded the decision."""
    order = PUMP_ORDERS[0]
    device, medication = pump_order_resources(order, "p1")
    app = make_app()
    body = order_sign_request(
        "p1", (device, medication), {}, "5b0b9a3c-1d2e-4f5a-8b6c-7d8e9f0a1b2c"
    )
    body["prefetch"] = patient_and_coverage_prefetch("p1")
    answer = app.test_client().post(ORDER_SIGN, json=body).get_json()
    store = app.extensions["cds_store"]
    row = summarize_response("a.json", order, device, medication, answer, store)
    assert row == SummaryRow("a.json", order.label, "EIP-CSII+DME-F2F", "conditional")


def test_summarize_response_without_decision() -> None:
    """No system action: deceased when a card says so, else none."""
    order = PUMP_ORDERS[1]
    device, medication = pump_order_resources(order, "p1")
    card = {
        "summary": f"{order.label}: the patient is recorded as deceased",
        "detail": "",
        "source": {"topic": {"code": "guideline"}},
        "extension": {
            "davinci-crd.associated-resource": [{"reference": f"DeviceRequest/{device['id']}"}]
        },
    }
    store = make_app().extensions["cds_store"]
    deceased = summarize_response("a.json", order, device, medication, {"cards": [card]}, store)
    assert (deceased.rule, deceased.outcome) == ("-", "deceased")
    nothing = summarize_response("a.json", order, device, medication, {"cards": []}, store)
    assert (nothing.rule, nothing.outcome) == ("-", "none")


def test_summary_totals_and_diff() -> None:
    rows = [
        SummaryRow("a.json", "E0784+insulin", "EIP-CSII", "conditional"),
        SummaryRow("a.json", "E0781+vancomycin", "EIP-VANCO", "not-covered"),
        SummaryRow("b.json", "E0784+insulin", "EIP-CSII", "conditional"),
    ]
    text = render_summary(rows)
    assert text.splitlines()[0] == "patient\torder\trule\toutcome"
    assert text.splitlines()[2] == "a.json\tE0781+vancomycin\tEIP-VANCO\tnot-covered"
    assert totals(rows) == "conditional: 2, not-covered: 1 (3 orders)"
    assert summary_diff(text, text) == ""
    changed = render_summary(
        [*rows[:2], SummaryRow("b.json", "E0784+insulin", "EIP-CSII", "covered")]
    )
    diff = summary_diff(text, changed)
    assert "-b.json\tE0784+insulin\tEIP-CSII\tconditional" in diff
    assert "+b.json\tE0784+insulin\tEIP-CSII\tcovered" in diff


def test_a_synthea_defibrillator_implantation_contraindicates_an_implanted_pump(
    shared_dir: Path,
) -> None:
    """The Synthea record whose only trace of a defibrillator is the Procedure that
    implanted it (SNOMED CT 447365002, 2016): an implantable baclofen pump is not covered,
    and the card names that Procedure."""
    path = shared_dir / "synthea-r4" / "control__Adolfo_Marquardt__50635536.json"
    bundle = json.loads(path.read_text(encoding="utf-8"))
    patient_id, prefetch = record_prefetch(bundle)
    order = next(o for o in PUMP_ORDERS if o.label == "E0783+baclofen intrathecal")
    device, medication = pump_order_resources(order, patient_id)
    body = order_sign_request(patient_id, (device, medication), prefetch, str(uuid.uuid4()))
    app = make_app()
    response = app.test_client().post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    answer = response.get_json()
    store = app.extensions["cds_store"]
    row = summarize_response(path.name, order, device, medication, answer, store)
    assert row.outcome == "not-covered"
    guideline = next(c for c in answer["cards"] if c["source"]["topic"]["code"] == "guideline")
    assert "**Against coverage**" in guideline["detail"]
    # The audit trail (and so the decision page) names the Procedure as the evidence.
    page = urlsplit(guideline["links"][0]["url"]).path
    assert "Procedure/23cdafbd-65e1-4948-98a6-e239cc924607" in app.test_client().get(page).get_data(
        as_text=True
    )
