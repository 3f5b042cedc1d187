"""Evidence wording: every summary of the wording data fills from the values the mappings
give it, and the numbers the fact catalog states are those the bindings apply."""

from __future__ import annotations

import string
from typing import Any

from coverage_policy.loader import load_fact_catalog
from fhir_mappings.evidence import evidence_summary, evidence_text, lab_name
from fhir_mappings.record import binding


def _templates(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, dict):
        return [
            found
            for key, value in node.items()
            if not key.startswith("$")
            for found in _templates(value, f"{path}.{key}" if path else key)
        ]
    return []


def test_every_summary_names_only_placeholders_it_is_given() -> None:
    allowed = {
        "name", "value", "decimals", "unit", "lower_limit", "on", "low", "date", "count",
        "days", "as_of", "source", "drug", "identified_by", "hcpcs", "years", "label",
        "code", "status", "since", "display", "onset", "min_per_day", "first", "last",
        "location", "end", "item", "answer", "authored", "route", "word", "described",
        "shown", "read", "codes", "kinds", "names",
    }  # fmt: skip
    for path, template in _templates(evidence_text()):
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        assert fields <= allowed, f"{path}: {fields - allowed}"


def test_a_lab_result_reads_as_a_lab_report_shows_it() -> None:
    lower = evidence_summary("lab", "lower_limit", low=0.8, decimals=2, unit="ng/mL")
    on = evidence_summary("lab", "on", date="2026-10-01")
    text = evidence_summary(
        "lab", "result", name=lab_name("c_peptide"), value=0.4, decimals=2, unit="ng/mL",
        lower_limit=lower, on=on,
    )  # fmt: skip
    assert text == "Fasting C-peptide 0.40 ng/mL (lab lower limit 0.80 ng/mL) on 2026-10-01"


def test_every_lab_name_is_a_lab_of_the_bindings() -> None:
    assert set(evidence_text()["lab"]["names"]) <= set(binding("labs")["labs"])


def test_the_fact_catalog_states_the_numbers_the_bindings_apply() -> None:
    catalog = load_fact_catalog()
    derived = binding("labs")["derived"]
    for fact, how in derived.items():
        if fact.startswith("$"):
            continue
        assert fact in catalog
        for lab in (how["lab"], how.get("drawn_with", how["lab"])):
            assert lab in binding("labs")["labs"]
    window = derived["lab.glucose_checks_per_day_60d"]["window_days"]
    assert f"over the {window} days" in catalog["lab.glucose_checks_per_day_60d"]["description"]
    assert derived["lab.c_peptide_fasting_glucose_mg_dl"]["within_days"] == 0
    assert "the same day" in catalog["lab.c_peptide_fasting_glucose_mg_dl"]["description"]
    injections = binding("drugs")["multiple_daily_injections"]
    description = catalog["med.insulin_mdi_days"]["description"]
    assert f"dosed {injections['min_doses_per_day']} or more times a day" in description
    assert injections["family"] in description
