"""The fuzz of ``tests/fuzz.py``, seeded and bounded (a few hundred requests in all):
no 5xx, every 4xx an OperationOutcome, no stack trace or internal path in any answer."""

from __future__ import annotations

import pytest

from tests.conftest import make_app
from tests.fuzz import Fuzzer, Observed, scenarios

SEED = 20261203


@pytest.mark.parametrize("name", sorted(scenarios()))
def test_fuzzed_requests_are_answered_without_a_5xx_and_with_operation_outcomes(
    name: str,
) -> None:
    scenario, examples = scenarios()[name]
    observed = Observed(strict=True)
    fuzzer = Fuzzer(make_app(), observed)
    try:
        scenario(fuzzer, examples, SEED)
    finally:
        fuzzer.close()
    assert observed.requests >= min(examples, 5)
    if observed.routed:
        print(f"\n{name}: {observed.report()}")
