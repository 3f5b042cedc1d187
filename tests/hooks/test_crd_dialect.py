"""The CRD dialect table: which version a request is answered in, and what differs."""

from __future__ import annotations

import pytest

from hooks.crd_dialect import CRD_DIALECTS, DEFAULT_CRD_VERSION, crd_dialect


@pytest.mark.parametrize(
    ("requested", "answered"),
    [
        ("2.2.0", "2.2"),
        (" 2.1.0-ballot ", "2.1"),
        ("2.0.1", "2.0"),
        ("2.2", "2.2"),
        ("3.0.0", DEFAULT_CRD_VERSION),
        ("", DEFAULT_CRD_VERSION),
        (2.2, DEFAULT_CRD_VERSION),
        (None, DEFAULT_CRD_VERSION),
    ],
)
def test_requested_version_picks_its_dialect_or_the_default(
    requested: object, answered: str
) -> None:
    assert crd_dialect(requested).version == answered


def test_only_2_2_allows_indeterminate_and_categories() -> None:
    assert {v for v, d in CRD_DIALECTS.items() if d.indeterminate_allowed} == {"2.2"}
    assert {v for v, d in CRD_DIALECTS.items() if d.detail_has_category} == {"2.2"}
    assert {v for v, d in CRD_DIALECTS.items() if d.doc_needed_repeats} == {"2.1", "2.2"}
