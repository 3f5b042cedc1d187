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

from functools import cache
from pathlib import Path

import pytest

from tests.corpus import (
    SUMMARY,
    SummaryRow,
    decide_corpus,
    render_summary,
    summary_diff,
    synthea_records,
    totals,
)
from tests.order_requests import PUMP_ORDERS


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
