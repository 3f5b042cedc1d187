"""The wording of evidence summaries, from ``evidence_text.json``: one home for what a
card, the decision page and the audit say a resource showed."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def evidence_text() -> dict[str, Any]:
    """The evidence wording data of this package."""
    text = resources.files("fhir_mappings").joinpath("evidence_text.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def evidence_summary(topic: str, key: str, **values: Any) -> str:
    """The summary ``topic.key`` of the wording data with ``values`` filled in."""
    return str(evidence_text()[topic][key]).format(**values)


def lab_name(kind: str) -> str:
    """How a lab report names a lab kind of ``bindings/labs.json``: "HbA1c"."""
    return str(evidence_text()["lab"]["names"][kind])
