"""Every criterion of EIP-CSII, EIP-VANCO, EIP-HEPARIN and IIP-INSULIN: met, unmet, unknown.

Each case gives the facts the criterion reads; facts left out of a case are data the
request could not provide (unknown).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from coverage_policy.engine import _Evaluator
from coverage_policy.loader import load_policy
from coverage_policy.model import CodedItem, Evidence, FactValue, Truth

AS_OF = date(2026, 11, 28)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"


def dx(system: str, code: str, status: str = "active") -> FactValue:
    return FactValue((CodedItem(system, code, "", status, Evidence("Condition/c1", code)),))


def f(value: Any) -> FactValue:
    return FactValue(value)


# criterion id -> (met facts, unmet facts, unknown facts)
CASES: dict[str, tuple[dict[str, FactValue], dict[str, FactValue], dict[str, FactValue]]] = {
    "EIP-CSII-HOME": ({"order.setting": f("home")}, {"order.setting": f("institutional")},
                      {"order.setting": f(None)}),
    "EIP-CSII-DIABETES": ({"patient.conditions": dx(ICD, "E10.65")},
                          {"patient.conditions": dx(SNOMED, "44054006", "inactive")},
                          {"patient.conditions": f(())}),
    "EIP-CSII-C-PEPTIDE": (
        {"lab.c_peptide_percent_of_lln": f(150), "lab.creatinine_clearance_ml_min": f(42),
         "lab.c_peptide_fasting_glucose_mg_dl": f(180)},
        {"lab.c_peptide_percent_of_lln": f(150), "lab.creatinine_clearance_ml_min": f(90),
         "lab.c_peptide_fasting_glucose_mg_dl": f(180)},
        {"lab.c_peptide_percent_of_lln": f(150), "lab.c_peptide_fasting_glucose_mg_dl": f(180)},
    ),
    "EIP-CSII-AUTOANTIBODY": ({"doc.beta-cell-autoantibody-positive": f(True)},
                              {"doc.beta-cell-autoantibody-positive": f(False)},
                              {"doc.beta-cell-autoantibody-positive": f(None)}),
    "EIP-CSII-EDUCATION": ({"doc.csii-diabetes-education": f(True)},
                           {"doc.csii-diabetes-education": f(False)}, {}),
    "EIP-CSII-MDI": ({"med.insulin_mdi_days": f(200)},
                     {"med.insulin_mdi_days": f(90), "doc.csii-mdi-6-months": f(False)},
                     {"med.insulin_mdi_days": f(90)}),
    "EIP-CSII-SMBG": ({"doc.csii-smbg-4-per-day": f(True)},
                      {"lab.glucose_checks_per_day_60d": f(1.5), "doc.csii-smbg-4-per-day": f(False)},
                      {"lab.glucose_checks_per_day_60d": f(1.5)}),
    "EIP-CSII-GLYCEMIC-PROBLEM": ({"lab.hba1c_percent": f(7.4)},
                                  {"lab.hba1c_percent": f(6.8), "doc.csii-glycemic-problem": f("none")},
                                  {"doc.csii-glycemic-problem": f(None)}),
    "EIP-CSII-PUMP-BEFORE-MEDICARE": ({"doc.csii-pump-before-medicare": f(True)},
                                      {"doc.csii-pump-before-medicare": f(False)}, {}),
    "EIP-CSII-CGM-PUMP": ({"order.hcpcs": f("E0784")},
                          {"order.hcpcs": f("E0787"), "doc.csii-cgm-criteria-met": f(False)},
                          {"order.hcpcs": f("E0787")}),
    "EIP-CSII-FOLLOW-UP": ({"encounter.last_visit_date": f(date(2026, 10, 1))},
                           {"encounter.last_visit_date": f(date(2026, 3, 1))},
                           {"encounter.last_visit_date": f(None)}),
    "EIP-HEPARIN-DIAGNOSIS": ({"patient.conditions": dx(ICD, "I26.99")},
                              {"patient.conditions": dx(SNOMED, "128053003", "refuted")},
                              {"patient.conditions": dx(ICD, "E11.9")}),
    "EIP-HEPARIN-INSTITUTIONAL": ({"order.setting": f("institutional")},
                                  {"order.setting": f("home")}, {}),
    "SCOPE-PUMP-KIND-KNOWN": ({"episode.pump_kind": f("external")},
                              {"episode.pump_kind": f(None), "doc.pump-kind": f(None)} , {}),
}
# Criteria the policy decides alone: unmet whatever the record says.
ALWAYS_UNMET = ("EIP-VANCO-NOT-COVERED", "IIP-INSULIN-NOT-COVERED")


def truth_of(criterion_id: str, facts: dict[str, FactValue]) -> Truth:
    return _Evaluator(load_policy(), facts, AS_OF).criterion(criterion_id).truth


@pytest.mark.parametrize("criterion_id", sorted(CASES))
def test_criterion_met_unmet_unknown(criterion_id: str) -> None:
    met, unmet, unknown = CASES[criterion_id]
    expected_unmet = Truth.UNKNOWN if criterion_id == "SCOPE-PUMP-KIND-KNOWN" else Truth.UNMET
    assert truth_of(criterion_id, met) is Truth.MET
    assert truth_of(criterion_id, unmet) is expected_unmet
    assert truth_of(criterion_id, unknown) is Truth.UNKNOWN


@pytest.mark.parametrize("criterion_id", ALWAYS_UNMET)
def test_non_covered_indications_are_unmet_whatever_the_record(criterion_id: str) -> None:
    assert truth_of(criterion_id, {}) is Truth.UNMET
    assert truth_of(criterion_id, {"order.setting": f("home")}) is Truth.UNMET


def test_every_criterion_of_these_rules_has_cases() -> None:
    policy = load_policy()
    rules = {"EIP-CSII", "EIP-VANCO", "EIP-HEPARIN", "IIP-INSULIN", "SCOPE-PUMP-KIND"}
    covered = set(CASES) | set(ALWAYS_UNMET)
    for rule in policy.rules:
        if rule.id in rules:
            assert set(rule.criteria) <= covered, rule.id
