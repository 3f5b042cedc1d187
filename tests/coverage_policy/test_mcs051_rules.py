"""Every criterion of every MCS051.01 rule, met / unmet / unknown, driven by facts.

Each criterion is evaluated on its own (a one-rule copy of the policy deciding on it),
so a case shows exactly which facts settle it. A fact left out of a case means its data
could not be had; a fact given as ``None`` was looked for and not found.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from typing import Any

import pytest

from coverage_policy.engine import evaluate_policy
from coverage_policy.loader import load_policy
from coverage_policy.model import (
    CodedItem,
    Evidence,
    FactValue,
    Outcome,
    Policy,
    Rule,
    RuleKind,
    Truth,
)

AS_OF = date(2026, 11, 20)
CPT = "http://www.ama-assn.org/go/cpt"
# The other implanted device's programmability, not documented.
NO_DEVICE_ANSWER: dict[str, Any] = {"doc.implanted-device-not-programmable": None}
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
KIND = "http://infusion-pump-cds.org/fhir/CodeSystem/implanted-device-kind"
MET, UNMET, UNKNOWN = Truth.MET, Truth.UNMET, Truth.UNKNOWN


@pytest.fixture(scope="module")
def policy() -> Policy:
    """The packaged MCS051.01 policy, loaded and checked."""
    return load_policy()


def item(code: str, status: str = "active", system: str = ICD) -> CodedItem:
    """A coded record (diagnosis or device) with its status."""
    return CodedItem(system, code, code, status, Evidence(f"Condition/{code}", code))


def days_ago(days: int) -> date:
    return AS_OF - timedelta(days=days)


def as_facts(values: dict[str, Any]) -> dict[str, FactValue]:
    """Plain values → facts; tuples of coded items stay tuples."""
    return {
        name: FactValue(value, (Evidence(f"Basic/{name}", str(value)),))
        for name, value in values.items()
    }


def criterion_truth(policy: Policy, criterion_id: str, values: dict[str, Any]) -> Truth:
    """The truth of one criterion on these facts (a one-rule copy of the policy)."""
    probe = Rule(
        id="PROBE",
        kind=RuleKind.INDICATION,
        title="probe",
        citations=(),
        applies_when={"const": "met"},
        decides={"criterion": criterion_id},
        criteria=(criterion_id,),
        messages={"covered": "", "not-covered": "", "conditional": ""},
    )
    decision = evaluate_policy(dataclasses.replace(policy, rules=(probe,)), as_facts(values), AS_OF)
    assert decision is not None
    return decision.indication.results[0].truth


DOC_CRITERIA = {
    "EIP-CSII-AUTOANTIBODY": "beta-cell-autoantibody-positive",
    "EIP-CSII-EDUCATION": "csii-diabetes-education",
    "EIP-CSII-PUMP-BEFORE-MEDICARE": "csii-pump-before-medicare",
    "PUMP-REVIEW-DOCUMENTED": "individual-review-indication",
    "TUMOR-UNRESECTABLE-OR-REFUSED": "tumor-unresectable-or-surgery-refused",
    "EIP-OTHER-PROLONGED-INFUSION": "eip-prolonged-infusion-criteria",
    "EIP-OTHER-INOTROPE-STAGE-D": "inotrope-heart-failure-stage-d",
    "EIP-OTHER-INOTROPE-CRITERIA": "inotrope-lcd-criteria",
    "EIP-OTHER-PAH-CRITERIA": "pah-lcd-criteria",
    "EIP-OTHER-INTERMITTENT-INFUSION": "eip-intermittent-infusion-criteria",
    "EIP-OTHER-ZICONOTIDE-REFRACTORY": "ziconotide-refractory-to-other-analgesia",
    "IIP-SPASTICITY-NONINVASIVE-FAILED": "noninvasive-spasticity-therapy-failed-6-weeks",
    "IIP-SPASTICITY-INTRATHECAL-TRIAL": "intrathecal-trial-dose-favorable",
    "IIP-OPIOID-LIFE-EXPECTANCY": "life-expectancy-at-least-3-months",
    "IIP-OPIOID-NONINVASIVE-FAILED": "noninvasive-pain-control-failed",
    "IIP-OPIOID-INTRASPINAL-TRIAL": "intraspinal-opioid-trial-successful",
    "IIP-OTHER-DRUG-NECESSARY": "iip-drug-reasonable-and-necessary",
    "IIP-OTHER-PUMP-NECESSARY": "iip-implanted-pump-medically-necessary",
    "IIP-OTHER-FDA-LABELING": "iip-pump-labeling-lists-drug",
    "IIP-CI-BODY-SIZE": "body-size-sufficient-for-implant",
}

# (criterion, facts, expected truth) for criteria read from structured data.
CASES: list[tuple[str, dict[str, Any], Truth]] = [
    ("SCOPE-PUMP-KIND-KNOWN", {"episode.pump_kind": "external"}, MET),
    ("SCOPE-PUMP-KIND-KNOWN", {"episode.pump_kind": None, "doc.pump-kind": "implantable"}, MET),
    ("SCOPE-PUMP-KIND-KNOWN", {"episode.pump_kind": None, "doc.pump-kind": None}, UNKNOWN),
    # EIP-CSII
    ("EIP-CSII-HOME", {"order.setting": "home"}, MET),
    ("EIP-CSII-HOME", {"order.setting": "institutional"}, UNMET),
    ("EIP-CSII-HOME", {"order.setting": None}, UNKNOWN),
    ("EIP-CSII-DIABETES", {"patient.conditions": (item("E11.9"),)}, MET),
    ("EIP-CSII-DIABETES", {"patient.conditions": (item("44054006", system=SCT),)}, MET),
    ("EIP-CSII-DIABETES", {"patient.conditions": (item("E10.9", "refuted"),)}, UNMET),
    ("EIP-CSII-DIABETES", {"patient.conditions": ()}, UNKNOWN),
    (
        "EIP-CSII-C-PEPTIDE",
        {
            "lab.c_peptide_percent_of_lln": 90,
            "lab.creatinine_clearance_ml_min": None,
            "lab.c_peptide_fasting_glucose_mg_dl": 140,
        },
        MET,
    ),
    (
        "EIP-CSII-C-PEPTIDE",
        {
            "lab.c_peptide_percent_of_lln": 180,
            "lab.creatinine_clearance_ml_min": 40,
            "lab.c_peptide_fasting_glucose_mg_dl": 140,
        },
        MET,
    ),
    (
        "EIP-CSII-C-PEPTIDE",
        {
            "lab.c_peptide_percent_of_lln": 180,
            "lab.creatinine_clearance_ml_min": 80,
            "lab.c_peptide_fasting_glucose_mg_dl": 140,
        },
        UNMET,
    ),
    (
        "EIP-CSII-C-PEPTIDE",
        {
            "lab.c_peptide_percent_of_lln": 90,
            "lab.creatinine_clearance_ml_min": None,
            "lab.c_peptide_fasting_glucose_mg_dl": 260,
        },
        UNMET,
    ),
    (
        "EIP-CSII-C-PEPTIDE",
        {
            "lab.c_peptide_percent_of_lln": None,
            "lab.creatinine_clearance_ml_min": None,
            "lab.c_peptide_fasting_glucose_mg_dl": None,
        },
        UNKNOWN,
    ),
    ("EIP-CSII-MDI", {"doc.csii-mdi-6-months": None, "med.insulin_mdi_days": 200}, MET),
    ("EIP-CSII-MDI", {"doc.csii-mdi-6-months": True, "med.insulin_mdi_days": None}, MET),
    ("EIP-CSII-MDI", {"doc.csii-mdi-6-months": False, "med.insulin_mdi_days": 30}, UNMET),
    ("EIP-CSII-MDI", {"doc.csii-mdi-6-months": None, "med.insulin_mdi_days": None}, UNKNOWN),
    (
        "EIP-CSII-SMBG",
        {"doc.csii-smbg-4-per-day": None, "lab.glucose_checks_per_day_60d": 4.5},
        MET,
    ),
    (
        "EIP-CSII-SMBG",
        {"doc.csii-smbg-4-per-day": False, "lab.glucose_checks_per_day_60d": 2.0},
        UNMET,
    ),
    (
        "EIP-CSII-SMBG",
        {"doc.csii-smbg-4-per-day": None, "lab.glucose_checks_per_day_60d": None},
        UNKNOWN,
    ),
    (
        "EIP-CSII-GLYCEMIC-PROBLEM",
        {"lab.hba1c_percent": 8.1, "doc.csii-glycemic-problem": None},
        MET,
    ),
    (
        "EIP-CSII-GLYCEMIC-PROBLEM",
        {"lab.hba1c_percent": 6.4, "doc.csii-glycemic-problem": "dawn"},
        MET,
    ),
    (
        "EIP-CSII-GLYCEMIC-PROBLEM",
        {"lab.hba1c_percent": 6.4, "doc.csii-glycemic-problem": "none"},
        UNMET,
    ),
    (
        "EIP-CSII-GLYCEMIC-PROBLEM",
        {"lab.hba1c_percent": 6.4, "doc.csii-glycemic-problem": None},
        UNKNOWN,
    ),
    ("EIP-CSII-INSULIN-PUMP-CODE", {"order.hcpcs": "E0784"}, MET),
    ("EIP-CSII-INSULIN-PUMP-CODE", {"order.hcpcs": "E0787"}, MET),
    ("EIP-CSII-INSULIN-PUMP-CODE", {"order.hcpcs": None}, MET),
    ("EIP-CSII-INSULIN-PUMP-CODE", {"order.hcpcs": "E0781"}, UNMET),
    ("EIP-CSII-INSULIN-PUMP-CODE", {}, UNKNOWN),
    ("EIP-CSII-CGM-PUMP", {"order.hcpcs": "E0784", "doc.csii-cgm-criteria-met": None}, MET),
    ("EIP-CSII-CGM-PUMP", {"order.hcpcs": "E0787", "doc.csii-cgm-criteria-met": True}, MET),
    ("EIP-CSII-CGM-PUMP", {"order.hcpcs": "E0787", "doc.csii-cgm-criteria-met": False}, UNMET),
    ("EIP-CSII-CGM-PUMP", {"order.hcpcs": "E0787", "doc.csii-cgm-criteria-met": None}, UNKNOWN),
    ("EIP-CSII-FOLLOW-UP", {"encounter.last_visit_date": days_ago(30)}, MET),
    ("EIP-CSII-FOLLOW-UP", {"encounter.last_visit_date": days_ago(200)}, UNMET),
    ("EIP-CSII-FOLLOW-UP", {"encounter.last_visit_date": None}, UNKNOWN),
    # EIP-IRON
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("E83.111"),)}, MET),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("T45.4X1A"),)}, MET),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("399187006", system=SCT),)}, MET),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("E83.111", "inactive"),)}, UNMET),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("E83.52"),)}, UNKNOWN),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("T45.4X4A"),)}, MET),
    # Adverse effect of iron (X5) and underdosing of iron (X6) are not iron poisoning.
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("T45.4X5A"),)}, UNKNOWN),
    ("EIP-IRON-DIAGNOSIS", {"patient.conditions": (item("T45.4X6A"),)}, UNKNOWN),
    ("EIP-IRON-EXTERNAL-PUMP", {"episode.pump_kind": "external"}, MET),
    ("EIP-IRON-EXTERNAL-PUMP", {"episode.pump_kind": "implantable"}, UNMET),
    ("EIP-IRON-EXTERNAL-PUMP", {"episode.pump_kind": None}, UNKNOWN),
    # EIP-HEPARIN
    ("EIP-HEPARIN-DIAGNOSIS", {"patient.conditions": (item("I26.99"),)}, MET),
    ("EIP-HEPARIN-DIAGNOSIS", {"patient.conditions": (item("I82.401", "inactive"),)}, UNMET),
    ("EIP-HEPARIN-DIAGNOSIS", {"patient.conditions": ()}, UNKNOWN),
    ("EIP-HEPARIN-INSTITUTIONAL", {"order.setting": "institutional"}, MET),
    ("EIP-HEPARIN-INSTITUTIONAL", {"order.setting": "home"}, UNMET),
    ("EIP-HEPARIN-INSTITUTIONAL", {"order.setting": None}, UNKNOWN),
    # EIP-CHEMO
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C22.0"),)}, MET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C18.7"),)}, MET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C19"),)}, MET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C20"),)}, MET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("363406005", system=SCT),)}, MET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C22.0", "refuted"),)}, UNMET),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("94260004", system=SCT),)}, UNKNOWN),
    ("EIP-CHEMO-DIAGNOSIS", {"patient.conditions": (item("C22.1"),)}, UNKNOWN),
    # EIP-MORPHINE
    ("EIP-MORPHINE-CANCER", {"patient.conditions": (item("C34.90"),)}, MET),
    ("EIP-MORPHINE-CANCER", {"patient.conditions": (item("G89.3"),)}, MET),
    ("EIP-MORPHINE-CANCER", {"patient.conditions": (item("C34.90", "inactive"),)}, UNMET),
    ("EIP-MORPHINE-CANCER", {"patient.conditions": (item("G89.29"),)}, UNKNOWN),
    (
        "EIP-MORPHINE-INTRACTABLE-PAIN",
        {"patient.conditions": (item("G89.3"),), "doc.intractable-cancer-pain": None},
        MET,
    ),
    (
        "EIP-MORPHINE-INTRACTABLE-PAIN",
        {"patient.conditions": (item("C34.90"),), "doc.intractable-cancer-pain": True},
        MET,
    ),
    (
        "EIP-MORPHINE-INTRACTABLE-PAIN",
        {"patient.conditions": (item("C34.90"),), "doc.intractable-cancer-pain": False},
        UNMET,
    ),
    (
        "EIP-MORPHINE-INTRACTABLE-PAIN",
        {"patient.conditions": (item("C34.90"),), "doc.intractable-cancer-pain": None},
        UNKNOWN,
    ),
    (
        "EIP-MORPHINE-DRUG",
        {"episode.drug_family": "morphine", "doc.morphine-not-tolerated": None},
        MET,
    ),
    (
        "EIP-MORPHINE-DRUG",
        {"episode.drug_family": "opioid-other", "doc.morphine-not-tolerated": True},
        MET,
    ),
    (
        "EIP-MORPHINE-DRUG",
        {"episode.drug_family": "opioid-other", "doc.morphine-not-tolerated": False},
        UNMET,
    ),
    (
        "EIP-MORPHINE-DRUG",
        {"episode.drug_family": "meperidine", "doc.morphine-not-tolerated": True},
        UNMET,
    ),
    (
        "EIP-MORPHINE-DRUG",
        {"episode.drug_family": "opioid-other", "doc.morphine-not-tolerated": None},
        UNKNOWN,
    ),
    # EIP-OTHER
    ("EIP-OTHER-CHEMO-MALIGNANCY", {"patient.conditions": (item("C92.00"),)}, MET),
    ("EIP-OTHER-CHEMO-MALIGNANCY", {"patient.conditions": (item("C92.00", "refuted"),)}, UNMET),
    ("EIP-OTHER-CHEMO-MALIGNANCY", {"patient.conditions": (item("D47.1"),)}, UNKNOWN),
    ("EIP-OTHER-INOTROPE-HEART-FAILURE", {"patient.conditions": (item("I50.22"),)}, MET),
    (
        "EIP-OTHER-INOTROPE-HEART-FAILURE",
        {"patient.conditions": (item("88805009", system=SCT),)},
        MET,
    ),
    (
        "EIP-OTHER-INOTROPE-HEART-FAILURE",
        {"patient.conditions": (item("I50.22", "inactive"),)},
        UNMET,
    ),
    ("EIP-OTHER-INOTROPE-HEART-FAILURE", {"patient.conditions": ()}, UNKNOWN),
    ("EIP-OTHER-PAH-DIAGNOSIS", {"patient.conditions": (item("I27.0"),)}, MET),
    ("EIP-OTHER-PAH-DIAGNOSIS", {"patient.conditions": (item("I27.21"),)}, MET),
    ("EIP-OTHER-PAH-DIAGNOSIS", {"patient.conditions": (item("I27.22"),)}, UNMET),
    ("EIP-OTHER-PAH-DIAGNOSIS", {"patient.conditions": (item("I27.0"), item("I27.23"))}, UNMET),
    ("EIP-OTHER-PAH-DIAGNOSIS", {"patient.conditions": ()}, UNKNOWN),
    ("EIP-OTHER-PAH-PUMP-K0455", {"order.hcpcs": "K0455"}, MET),
    ("EIP-OTHER-PAH-PUMP-K0455", {"order.hcpcs": "E0779"}, UNMET),
    ("EIP-OTHER-PAH-PUMP-K0455", {"order.hcpcs": None}, UNKNOWN),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("D80.0"),)}, MET),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("G61.81"),)}, MET),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("D80.0", "refuted"),)}, UNMET),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("D84.9"),)}, UNKNOWN),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("D83.9"),)}, MET),
    ("EIP-OTHER-SCIG-DIAGNOSIS", {"patient.conditions": (item("D82.1"),)}, MET),
    ("EIP-OTHER-SCIG-SUBCUTANEOUS", {"episode.route": "subcutaneous"}, MET),
    ("EIP-OTHER-SCIG-SUBCUTANEOUS", {"episode.route": "intravenous"}, UNMET),
    ("EIP-OTHER-SCIG-SUBCUTANEOUS", {"episode.route": None}, UNKNOWN),
    ("EIP-OTHER-SCIG-PUMP-E0779", {"order.hcpcs": "E0779"}, MET),
    ("EIP-OTHER-SCIG-PUMP-E0779", {"order.hcpcs": "E0781"}, UNMET),
    ("EIP-OTHER-SCIG-PUMP-E0779", {"order.hcpcs": None}, UNKNOWN),
    # IIP-LIVER
    ("IIP-SPASTICITY-INTRATHECAL", {"episode.route": "intrathecal"}, MET),
    ("IIP-SPASTICITY-INTRATHECAL", {"episode.route": "epidural"}, UNMET),
    ("IIP-SPASTICITY-INTRATHECAL", {"episode.route": None}, UNKNOWN),
    ("IIP-OPIOID-INTRASPINAL", {"episode.route": "intrathecal"}, MET),
    ("IIP-OPIOID-INTRASPINAL", {"episode.route": "epidural"}, MET),
    ("IIP-OPIOID-INTRASPINAL", {"episode.route": "intravenous"}, UNMET),
    ("IIP-OPIOID-INTRASPINAL", {"episode.route": None}, UNKNOWN),
    ("IIP-LIVER-INTRA-ARTERIAL", {"episode.route": "intra-arterial"}, MET),
    ("IIP-LIVER-INTRA-ARTERIAL", {"episode.route": "intrathecal"}, UNMET),
    ("IIP-LIVER-INTRA-ARTERIAL", {"episode.route": None}, UNKNOWN),
    ("IIP-LIVER-DIAGNOSIS", {"patient.conditions": (item("C22.0"),)}, MET),
    ("IIP-LIVER-DIAGNOSIS", {"patient.conditions": (item("C18.7"), item("C78.7"))}, MET),
    (
        "IIP-LIVER-DIAGNOSIS",
        {"patient.conditions": (item("C20"), item("C78.7"), item("C78.01", "inactive"))},
        MET,
    ),
    (
        "IIP-LIVER-DIAGNOSIS",
        {
            "patient.conditions": (
                item("C22.0", "refuted"),
                item("C18.7"),
                item("C78.7"),
                item("C78.01"),
            )
        },
        UNMET,
    ),
    (
        "IIP-LIVER-DIAGNOSIS",
        {
            "patient.conditions": (
                item("C22.0", "refuted"),
                item("C18.7"),
                item("C78.7"),
                item("C79.51"),
            )
        },
        UNMET,
    ),
    (
        "IIP-LIVER-DIAGNOSIS",
        {"patient.conditions": (item("C18.7"), item("C78.7"), item("C77.2"))},
        UNKNOWN,
    ),
    ("IIP-LIVER-DIAGNOSIS", {"patient.conditions": (item("C18.7"),)}, UNKNOWN),
    ("IIP-LIVER-DIAGNOSIS", {"patient.conditions": ()}, UNKNOWN),
    # IIP-SPASTICITY
    (
        "IIP-SPASTICITY-SIX-WEEK-TRIAL",
        {
            "med.oral_antispasmodic_trial_days": 60,
            "doc.noninvasive-spasticity-therapy-failed-6-weeks": None,
        },
        MET,
    ),
    (
        "IIP-SPASTICITY-SIX-WEEK-TRIAL",
        {
            "med.oral_antispasmodic_trial_days": None,
            "doc.noninvasive-spasticity-therapy-failed-6-weeks": True,
        },
        MET,
    ),
    (
        "IIP-SPASTICITY-SIX-WEEK-TRIAL",
        {
            "med.oral_antispasmodic_trial_days": 20,
            "doc.noninvasive-spasticity-therapy-failed-6-weeks": False,
        },
        UNMET,
    ),
    (
        "IIP-SPASTICITY-SIX-WEEK-TRIAL",
        {
            "med.oral_antispasmodic_trial_days": 20,
            "doc.noninvasive-spasticity-therapy-failed-6-weeks": None,
        },
        UNKNOWN,
    ),
    # Contraindications
    ("IIP-CI-NO-DRUG-ALLERGY", {"patient.drug_allergy": False}, MET),
    ("IIP-CI-NO-DRUG-ALLERGY", {"patient.drug_allergy": True}, UNMET),
    ("IIP-CI-NO-DRUG-ALLERGY", {"patient.drug_allergy": None}, UNKNOWN),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": ()}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("L03.115", "inactive"),)}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("L03.115"),)}, UNMET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("A41.9"),)}, UNMET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("301011002", system=SCT),)}, UNMET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {}, UNKNOWN),
    # Chronic or superficial infections are not an active infection for implantation.
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B18.2"),)}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B20"),)}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B35.1"),)}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B36.0"),)}, MET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B37.7"),)}, UNMET),
    ("IIP-CI-NO-ACTIVE-INFECTION", {"patient.conditions": (item("B17.10"),)}, UNMET),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {"patient.implanted_devices": (), "order.hcpcs": "E0783"},
        MET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {
            "patient.implanted_devices": (item("706004007", "inactive", SCT),),
            "order.hcpcs": "E0783",
        },
        MET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {
            "patient.implanted_devices": (item("programmable-infusion-pump", system=KIND),),
            "order.hcpcs": "E0786",
        },
        MET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {"patient.implanted_devices": (item("706004007", system=SCT),), "order.hcpcs": "E0783"},
        UNMET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {"patient.implanted_devices": (item("72506001", system=SCT),), "order.hcpcs": "E0783"},
        UNMET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {
            "patient.implanted_devices": (item("neurostimulator", system=KIND),),
            "order.hcpcs": "E0783",
        },
        UNMET,
    ),
    (
        "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
        {
            "patient.implanted_devices": (item("programmable-infusion-pump", system=KIND),),
            "order.hcpcs": "E0783",
        },
        UNMET,
    ),
    ("IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE", {"order.hcpcs": "E0783"}, UNKNOWN),
    # Every kind of evidence and every device kind: status codes of Conditions, SNOMED CT
    # findings, implantation Procedures (CPT, SNOMED CT), device kinds read from words.
    *[
        (
            "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
            {**NO_DEVICE_ANSWER, "patient.implanted_devices": (device,), "order.hcpcs": "E0783"},
            UNMET,
        )
        for device in (
            item("Z95.0"),
            item("Z950"),  # ICD-10-CM sent without its dot
            item("Z95.810"),
            item("Z96.82"),
            item("Z96.21"),
            item("441509002", system=SCT),
            item("447365002", system=SCT),
            item("43252007", system=SCT),
            item("33208", system=CPT),
            item("63685", system=CPT),
            item("64568", system=CPT),
            item("69930", system=CPT),
            item("62362", system=CPT),
            item("cochlear-implant", system=KIND),
            item("neurostimulator", system=KIND),
        )
    ],
    # Shown but of unclear programmability, or unconfirmed: unknown, never silently met.
    *[
        (
            "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
            {**NO_DEVICE_ANSWER, "patient.implanted_devices": (device,), "order.hcpcs": "E0783"},
            UNKNOWN,
        )
        for device in (
            item("Z95.811"),
            item("Z95.818"),
            item("Z96.29"),
            item("Z96.41"),
            item("360066001", system=SCT),
            item("ventricular-assist-device", system=KIND),
            item("auditory-implant", system=KIND),
            item("Z95.0", "unconfirmed"),
            item("pacemaker", "unconfirmed", KIND),
        )
    ],
    # Removed (resolved status code, inactive device) or not a programmable device at all.
    *[
        (
            "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",
            {**NO_DEVICE_ANSWER, "patient.implanted_devices": (device,), "order.hcpcs": "E0783"},
            MET,
        )
        for device in (
            item("Z95.0", "inactive"),
            item("Z95.811", "inactive"),
            item("Z95.2"),  # prosthetic heart valve
            item("Z96.22"),  # myringotomy tubes
            item("Z95.1"),  # coronary bypass graft
        )
    ],
    # DME face-to-face
    (
        "DME-F2F-ENCOUNTER",
        {"encounter.f2f_with_orderer_date": days_ago(30), "doc.face-to-face-within-6-months": None},
        MET,
    ),
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": None,
            "doc.face-to-face-within-6-months": days_ago(100),
        },
        MET,
    ),
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": None,
            "doc.face-to-face-within-6-months": days_ago(300),
        },
        UNMET,
    ),
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": days_ago(300),
            "doc.face-to-face-within-6-months": None,
        },
        UNKNOWN,
    ),
    (
        "DME-F2F-ENCOUNTER",
        {"encounter.f2f_with_orderer_date": None, "doc.face-to-face-within-6-months": None},
        UNKNOWN,
    ),
    # Six calendar months before 2026-11-20 is 2026-05-20 (184 days).
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": date(2026, 5, 20),
            "doc.face-to-face-within-6-months": None,
        },
        MET,
    ),
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": None,
            "doc.face-to-face-within-6-months": date(2026, 5, 19),
        },
        UNMET,
    ),
    # An examination dated after the order is not one within the 6 months before it.
    (
        "DME-F2F-ENCOUNTER",
        {
            "encounter.f2f_with_orderer_date": None,
            "doc.face-to-face-within-6-months": date(2026, 11, 21),
        },
        UNMET,
    ),
    # Billing guidance
    ("BILLING-IMPLANTABLE-PUMP", {"episode.pump_kind": "implantable", "order.setting": None}, MET),
    (
        "BILLING-IMPLANTABLE-PUMP",
        {"episode.pump_kind": "implantable", "order.setting": "home"},
        MET,
    ),
    (
        "BILLING-IMPLANTABLE-PUMP",
        {"episode.pump_kind": "implantable", "order.setting": "institutional"},
        UNMET,
    ),
    ("BILLING-IMPLANTABLE-PUMP", {"episode.pump_kind": "external", "order.setting": None}, UNMET),
    ("BILLING-IMPLANTABLE-PUMP", {"episode.pump_kind": None, "order.setting": None}, UNKNOWN),
    (
        "BILLING-EXTERNAL-PUMP-AT-HOME",
        {"episode.pump_kind": "external", "order.setting": "home"},
        MET,
    ),
    (
        "BILLING-EXTERNAL-PUMP-AT-HOME",
        {"episode.pump_kind": "external", "order.setting": "institutional"},
        UNMET,
    ),
    (
        "BILLING-EXTERNAL-PUMP-AT-HOME",
        {"episode.pump_kind": "external", "order.setting": None},
        UNKNOWN,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": "none", "doc.part-a-coverage-status": None},
        MET,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": "active", "doc.part-a-coverage-status": "exhausted"},
        MET,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": None, "doc.part-a-coverage-status": "non-covered-stay"},
        MET,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": "active", "doc.part-a-coverage-status": None},
        UNMET,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": "active", "doc.part-a-coverage-status": "active"},
        UNMET,
    ),
    (
        "BILLING-NO-PART-A-FOR-STAY",
        {"coverage.part_a_status": None, "doc.part-a-coverage-status": None},
        UNKNOWN,
    ),
]
for _criterion, _item in DOC_CRITERIA.items():
    CASES += [
        (_criterion, {f"doc.{_item}": True}, MET),
        (_criterion, {f"doc.{_item}": False}, UNMET),
        (_criterion, {f"doc.{_item}": None}, UNKNOWN),
    ]

# -- an explicit answer decides --------------------------------------------------------
# Criteria an answer or the record can settle: (the answer that says no, the answer that
# says yes, the record facts when they show nothing, the record facts showing it met).
# "Answered no" makes the criterion unmet, whatever the record does not show, unless the
# record itself shows the criterion met.
ANSWER_OR_RECORD: dict[str, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {
    "EIP-CSII-MDI": (
        ("doc.csii-mdi-6-months", False, True),
        {"med.insulin_mdi_days": None},
        {"med.insulin_mdi_days": 200},
    ),
    "EIP-CSII-SMBG": (
        ("doc.csii-smbg-4-per-day", False, True),
        {"lab.glucose_checks_per_day_60d": None},
        {"lab.glucose_checks_per_day_60d": 4.5},
    ),
    "EIP-CSII-GLYCEMIC-PROBLEM": (
        ("doc.csii-glycemic-problem", "none", "hypoglycemia"),
        {"lab.hba1c_percent": None},
        {"lab.hba1c_percent": 8.1},
    ),
    "EIP-CSII-CGM-PUMP": (
        ("doc.csii-cgm-criteria-met", False, True),
        {"order.hcpcs": "E0787"},  # the order is the record here: E0787 needs the answer
        {"order.hcpcs": "E0784"},
    ),
    "EIP-MORPHINE-INTRACTABLE-PAIN": (
        ("doc.intractable-cancer-pain", False, True),
        {"patient.conditions": ()},
        {"patient.conditions": (item("G89.3"),)},
    ),
    "IIP-SPASTICITY-SIX-WEEK-TRIAL": (
        ("doc.noninvasive-spasticity-therapy-failed-6-weeks", False, True),
        {"med.oral_antispasmodic_trial_days": None},
        {"med.oral_antispasmodic_trial_days": 60},
    ),
    "DME-F2F-ENCOUNTER": (
        ("doc.face-to-face-within-6-months", days_ago(300), days_ago(100)),
        {"encounter.f2f_with_orderer_date": None},
        {"encounter.f2f_with_orderer_date": days_ago(30)},
    ),
    "BILLING-NO-PART-A-FOR-STAY": (
        ("doc.part-a-coverage-status", "active", "exhausted"),
        {"coverage.part_a_status": None},
        {"coverage.part_a_status": "none"},
    ),
    "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE": (
        ("doc.implanted-device-not-programmable", False, True),
        # Silent on programmability: the record shows a ventricular assist device.
        {"patient.implanted_devices": (item("Z95.811"),), "order.hcpcs": "E0783"},
        {"patient.implanted_devices": (), "order.hcpcs": "E0783"},
    ),
    "SCOPE-PUMP-KIND-KNOWN": (
        ("doc.pump-kind", None, "implantable"),  # every answer names a kind: no "no" answer
        {"episode.pump_kind": None},
        {"episode.pump_kind": "external"},
    ),
}
# Criteria reading an answer beside other facts that the record cannot show met: the
# answer alone settles them, and the DOC_CRITERIA table tests it.
ANSWER_DECIDES_ALONE = {
    "IIP-CI-BODY-SIZE": "weight and BMI are shown as evidence, they never show size enough",
    "EIP-MORPHINE-DRUG": "the answer matters only for another opioid than morphine",
}


def _answer_cases() -> list[tuple[str, str, dict[str, Any], Truth]]:
    cases = []
    for cid, ((fact, no, yes), silent, shows) in ANSWER_OR_RECORD.items():
        if no is not None:
            # The order's own facts are always had; the record's may not be.
            order_only = {k: v for k, v in silent.items() if k.startswith(("order.", "episode."))}
            cases += [
                (cid, "answered no, record silent", {fact: no, **silent}, UNMET),
                (cid, "answered no, record not had", {fact: no, **order_only}, UNMET),
                (cid, "answered no, record shows it", {fact: no, **shows}, MET),
            ]
        cases += [
            (cid, "answered yes, record silent", {fact: yes, **silent}, MET),
            (cid, "not answered, record shows it", {fact: None, **shows}, MET),
        ]
    return cases


@pytest.mark.parametrize(
    ("criterion_id", "case", "values", "expected"),
    _answer_cases(),
    ids=[f"{c}-{case}" for c, case, _, _ in _answer_cases()],
)
def test_an_explicit_answer_decides_unless_the_record_shows_it_met(
    policy: Policy, criterion_id: str, case: str, values: dict[str, Any], expected: Truth
) -> None:
    assert criterion_truth(policy, criterion_id, values) is expected


def test_every_criterion_an_answer_or_the_record_settles_is_tested(policy: Policy) -> None:
    """A criterion reading a documentation answer and facts of the record is in the table."""
    mixed = {
        cid
        for cid, criterion in policy.criteria.items()
        if any(f.startswith("doc.") for f in criterion.facts)
        and any(not f.startswith("doc.") for f in criterion.facts)
    }
    assert mixed == set(ANSWER_OR_RECORD) | set(ANSWER_DECIDES_ALONE)


def test_an_answer_no_shows_the_answer_as_evidence(policy: Policy) -> None:
    values = {"doc.csii-mdi-6-months": False, "med.insulin_mdi_days": None}
    probe = Rule(
        id="PROBE",
        kind=RuleKind.INDICATION,
        title="probe",
        citations=(),
        applies_when={"const": "met"},
        decides={"criterion": "EIP-CSII-MDI"},
        criteria=("EIP-CSII-MDI",),
        messages={"covered": "", "not-covered": "", "conditional": ""},
    )
    decision = evaluate_policy(dataclasses.replace(policy, rules=(probe,)), as_facts(values), AS_OF)
    assert decision is not None
    assert decision.outcome is Outcome.NOT_COVERED
    assert decision.indication.missing is None
    result = decision.indication.results[0]
    assert result.truth is UNMET
    assert result.evidence[0].reference == "Basic/doc.csii-mdi-6-months"


# Criteria whose truth is fixed by the policy: a non-covered indication or a note.
FIXED = {
    "EIP-VANCO-NOT-COVERED": UNMET,
    "IIP-INSULIN-NOT-COVERED": UNMET,
    "IIP-HEPARIN-NOT-COVERED": UNMET,
    "COVID-PHE-IN-EFFECT": MET,
    "CSII-CLINICAL-TRIAL-USE": MET,
}
# A pump kind that is never looked for cannot be found absent: "known" is met or unknown.
NEVER_UNMET = {"SCOPE-PUMP-KIND-KNOWN"}


@pytest.mark.parametrize(
    ("criterion_id", "values", "expected"),
    CASES,
    ids=[f"{c}-{t.value}-{i}" for i, (c, _, t) in enumerate(CASES)],
)
def test_criterion_truth(
    policy: Policy, criterion_id: str, values: dict[str, Any], expected: Truth
) -> None:
    assert criterion_truth(policy, criterion_id, values) is expected


@pytest.mark.parametrize(("criterion_id", "expected"), sorted(FIXED.items()))
def test_fixed_criteria(policy: Policy, criterion_id: str, expected: Truth) -> None:
    assert criterion_truth(policy, criterion_id, {}) is expected


def test_every_criterion_has_met_unmet_and_unknown_cases(policy: Policy) -> None:
    """The tables above cover every criterion of the policy with each truth it can take."""
    seen: dict[str, set[Truth]] = {}
    for criterion_id, _, truth in CASES:
        seen.setdefault(criterion_id, set()).add(truth)
    for criterion_id in policy.criteria:
        if criterion_id in FIXED:
            continue
        expected = {MET, UNKNOWN} if criterion_id in NEVER_UNMET else {MET, UNMET, UNKNOWN}
        assert seen.get(criterion_id) == expected, criterion_id


def test_body_size_shows_weight_and_bmi_as_evidence(policy: Policy) -> None:
    facts = as_facts(
        {"doc.body-size-sufficient-for-implant": False, "lab.body_weight_kg": 36.0, "lab.bmi": 14.8}
    )
    decision = evaluate_policy(
        policy,
        {
            **facts,
            **as_facts(
                {"episode.pump_kind": "implantable", "episode.drug_family": "antispasmodic"}
            ),
        },
        AS_OF,
    )
    assert decision is not None
    requirement = next(r for r in decision.requirements if r.rule.id == "IIP-CONTRAINDICATIONS")
    body = next(r for r in requirement.results if r.criterion.id == "IIP-CI-BODY-SIZE")
    assert body.truth is UNMET
    assert {e.reference for e in body.evidence} >= {"Basic/lab.body_weight_kg", "Basic/lab.bmi"}


# -- rule selection and outcomes ------------------------------------------------------


def decide(policy: Policy, values: dict[str, Any], as_of: date = AS_OF) -> Any:
    decision = evaluate_policy(policy, as_facts(values), as_of)
    assert decision is not None
    return decision


@pytest.mark.parametrize(
    ("values", "rule_id"),
    [
        ({"episode.pump_kind": None}, "SCOPE-PUMP-KIND"),
        ({"episode.pump_kind": "external", "episode.drug_family": "deferoxamine"}, "EIP-IRON"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "deferoxamine"}, "EIP-IRON"),
        ({"episode.pump_kind": "external", "episode.drug_family": "insulin"}, "EIP-CSII"),
        ({"episode.pump_kind": "external", "episode.drug_family": "vancomycin"}, "EIP-VANCO"),
        ({"episode.pump_kind": "external", "episode.drug_family": "heparin"}, "EIP-HEPARIN"),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "chemotherapy",
                "patient.conditions": (item("C22.0"),),
            },
            "EIP-CHEMO",
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "floxuridine",
                "patient.conditions": (item("C20"),),
            },
            "EIP-CHEMO",
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "chemotherapy",
                "patient.conditions": (item("C92.00"),),
            },
            "EIP-OTHER-CHEMO",
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "chemotherapy",
                "patient.conditions": (item("C22.0", "refuted"),),
            },
            "EIP-OTHER-CHEMO",
        ),
        ({"episode.pump_kind": "external", "episode.drug_family": "morphine"}, "EIP-MORPHINE"),
        ({"episode.pump_kind": "external", "episode.drug_family": "opioid-other"}, "EIP-MORPHINE"),
        ({"episode.pump_kind": "external", "episode.drug_family": "meperidine"}, "EIP-MORPHINE"),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "inotrope"},
            "EIP-OTHER-INOTROPE",
        ),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "prostacyclin"},
            "EIP-OTHER-PROSTACYCLIN",
        ),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "anti-infective"},
            "EIP-OTHER-ANTI-INFECTIVE",
        ),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "ziconotide"},
            "EIP-OTHER-ZICONOTIDE",
        ),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "immune-globulin"},
            "EIP-OTHER-SCIG",
        ),
        (
            {"episode.pump_kind": "external", "episode.drug_family": "other"},
            "PUMP-INDIVIDUAL-REVIEW",
        ),
        ({"episode.pump_kind": "external", "episode.drug_family": None}, "PUMP-INDIVIDUAL-REVIEW"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "insulin"}, "IIP-INSULIN"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "heparin"}, "IIP-HEPARIN"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "floxuridine"}, "IIP-LIVER"),
        (
            {"episode.pump_kind": "implantable", "episode.drug_family": "antispasmodic"},
            "IIP-SPASTICITY",
        ),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "morphine"}, "IIP-OPIOID"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "opioid-other"}, "IIP-OPIOID"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "ziconotide"}, "IIP-OTHER"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": "chemotherapy"}, "IIP-OTHER"),
        ({"episode.pump_kind": "implantable", "episode.drug_family": None}, "IIP-OTHER"),
    ],
)
def test_first_applicable_indication_decides(
    policy: Policy, values: dict[str, Any], rule_id: str
) -> None:
    assert decide(policy, values).rule_id == rule_id


CLEAN_IMPLANT = {
    "patient.drug_allergy": False,
    "patient.conditions": (),
    "patient.implanted_devices": (),
    "doc.body-size-sufficient-for-implant": True,
    "order.hcpcs": "E0783",
}


@pytest.mark.parametrize(
    ("values", "outcome"),
    [
        (CLEAN_IMPLANT, Outcome.COVERED),
        ({**CLEAN_IMPLANT, "patient.drug_allergy": True}, Outcome.NOT_COVERED),
        ({**CLEAN_IMPLANT, "patient.conditions": (item("T85.79XA"),)}, Outcome.NOT_COVERED),
        ({**CLEAN_IMPLANT, "doc.body-size-sufficient-for-implant": False}, Outcome.NOT_COVERED),
        (
            {**CLEAN_IMPLANT, "patient.implanted_devices": (item("14106009", system=SCT),)},
            Outcome.NOT_COVERED,
        ),
        ({**CLEAN_IMPLANT, "doc.body-size-sufficient-for-implant": None}, Outcome.CONDITIONAL),
    ],
)
def test_contraindication_requirement_worst_outcome_wins(
    policy: Policy, values: dict[str, Any], outcome: Outcome
) -> None:
    """A covered spasticity indication is made not covered by any one contraindication."""
    spasticity = {
        "episode.pump_kind": "implantable",
        "episode.drug_family": "antispasmodic",
        "episode.route": "intrathecal",
        "med.oral_antispasmodic_trial_days": 60,
        "doc.noninvasive-spasticity-therapy-failed-6-weeks": True,
        "doc.intrathecal-trial-dose-favorable": True,
        "encounter.f2f_with_orderer_date": days_ago(20),
    }
    decision = decide(policy, {**spasticity, **values})
    assert decision.indication.outcome is Outcome.COVERED
    assert decision.outcome is outcome


@pytest.mark.parametrize(
    ("hcpcs", "kind", "setting", "applies"),
    [
        ("E0779", "external", "home", True),
        ("E0780", "external", None, True),
        ("E0781", "external", "home", True),
        ("E0784", "external", "home", True),
        ("E0787", "external", "home", True),
        ("E0781", "external", "institutional", False),
        ("E0791", "external", "home", False),
        ("K0455", "external", "home", False),
        ("E0782", "implantable", "institutional", True),
        ("E0783", "implantable", None, True),
        ("E0786", "implantable", "home", True),
        ("E0785", "implantable", "home", False),
        (None, "external", "home", False),
    ],
)
def test_face_to_face_applies_to_implantable_and_home_ambulatory_pumps(
    policy: Policy, hcpcs: str | None, kind: str, setting: str | None, applies: bool
) -> None:
    """A pump used in a hospital or SNF bed is not DME; an implanted one needs the visit."""
    values = {
        "episode.pump_kind": kind,
        "episode.drug_family": "deferoxamine",
        "order.hcpcs": hcpcs,
        "order.setting": setting,
    }
    decision = decide(policy, values)
    assert ("DME-F2F" in {r.rule.id for r in decision.requirements}) is applies


def test_face_to_face_is_not_required_before_it_took_effect(policy: Policy) -> None:
    """DME-F2F is effective from 2013-07-01 (ACA section 6407)."""
    rule = policy.rules_by_id["DME-F2F"]
    assert rule.effective.start == date(2013, 7, 1)


@pytest.mark.parametrize(
    ("as_of", "shown"),
    [
        (date(2023, 5, 1), True),
        (date(2023, 5, 11), True),
        (date(2023, 5, 12), False),
        (date(2023, 6, 1), False),
    ],
)
def test_covid_phe_flexibilities_are_effective_dated(
    policy: Policy, as_of: date, shown: bool
) -> None:
    decision = decide(
        policy, {"episode.pump_kind": "external", "episode.drug_family": "deferoxamine"}, as_of
    )
    assert ("COVID-PHE-FLEXIBILITIES" in {g.rule.id for g in decision.guidance}) is shown


@pytest.mark.parametrize(
    ("values", "truth"),
    [
        (
            {
                "episode.pump_kind": "implantable",
                "episode.drug_family": "morphine",
                "order.setting": None,
            },
            MET,
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "morphine",
                "order.setting": "home",
            },
            MET,
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "heparin",
                "order.setting": "institutional",
            },
            UNMET,
        ),
        (
            {
                "episode.pump_kind": "external",
                "episode.drug_family": "heparin",
                "order.setting": None,
            },
            UNKNOWN,
        ),
    ],
)
def test_billing_guidance_reports_part_b_or_not(
    policy: Policy, values: dict[str, Any], truth: Truth
) -> None:
    decision = decide(policy, values)
    billing = next(g for g in decision.guidance if g.rule.id == "BILLING-PARTB-PARTD")
    assert billing.truth is truth
    assert billing.rule.messages[truth.value]


def test_institutional_billing_note_only_in_a_hospital_or_snf(policy: Policy) -> None:
    home = decide(
        policy,
        {
            "episode.pump_kind": "external",
            "episode.drug_family": "heparin",
            "order.setting": "home",
        },
    )
    bed = decide(
        policy,
        {
            "episode.pump_kind": "external",
            "episode.drug_family": "heparin",
            "order.setting": "institutional",
            "coverage.part_a_status": "none",
            "doc.part-a-coverage-status": None,
        },
    )
    assert "BILLING-PARTB-PARTD-INSTITUTIONAL" not in {g.rule.id for g in home.guidance}
    note = next(g for g in bed.guidance if g.rule.id == "BILLING-PARTB-PARTD-INSTITUTIONAL")
    assert note.truth is MET
    assert "Part D" in note.rule.messages["met"]


def test_guidance_never_changes_the_outcome(policy: Policy) -> None:
    values = {
        "episode.pump_kind": "external",
        "episode.drug_family": "vancomycin",
        "order.setting": None,
    }
    decision = decide(policy, values)
    assert decision.outcome is Outcome.NOT_COVERED
    assert {g.rule.id for g in decision.guidance} >= {"BILLING-PARTB-PARTD"}


def test_csii_gets_the_ncd_310_1_note(policy: Policy) -> None:
    decision = decide(policy, {"episode.pump_kind": "external", "episode.drug_family": "insulin"})
    assert "CSII-CLINICAL-TRIALS" in {g.rule.id for g in decision.guidance}


def test_non_covered_implantables_offer_an_alternative(policy: Policy) -> None:
    rules = policy.rules_by_id
    assert rules["IIP-INSULIN"].alternatives == ("external-csii-pump",)
    assert rules["IIP-HEPARIN"].alternatives == ("institutional-external-heparin-pump",)
    assert rules["EIP-VANCO"].alternatives == ("elastomeric-pump", "gravity-drip")


def test_insulin_on_a_pump_that_is_not_an_insulin_pump_is_not_csii(policy: Policy) -> None:
    """Insulin ordered with an E0781 is not CSII: EIP-CSII is not covered, citing LCD L33794."""
    decision = decide(
        policy,
        {"episode.pump_kind": "external", "episode.drug_family": "insulin", "order.hcpcs": "E0781"},
    )
    assert decision.indication.rule.id == "EIP-CSII"
    assert decision.indication.outcome is Outcome.NOT_COVERED
    code = next(
        r for r in decision.indication.results if r.criterion.id == "EIP-CSII-INSULIN-PUMP-CODE"
    )
    assert code.truth is UNMET
    assert "LCD-L33794" in {c.source for c in code.criterion.citations}


@pytest.mark.parametrize(
    ("family", "route", "outcome"),
    [
        ("antispasmodic", "intrathecal", Outcome.COVERED),
        ("antispasmodic", "intravenous", Outcome.NOT_COVERED),
        ("antispasmodic", None, Outcome.CONDITIONAL),
        ("morphine", "epidural", Outcome.COVERED),
        ("morphine", "intravenous", Outcome.NOT_COVERED),
        ("morphine", None, Outcome.CONDITIONAL),
    ],
)
def test_implanted_spasticity_and_opioid_pumps_need_their_route(
    policy: Policy, family: str, route: str | None, outcome: Outcome
) -> None:
    """Antispasmodics intrathecally; opioids intrathecally or epidurally (NCD 280.14 B.3)."""
    documented = {
        "episode.pump_kind": "implantable",
        "episode.drug_family": family,
        "episode.route": route,
        "med.oral_antispasmodic_trial_days": 60,
        "doc.noninvasive-spasticity-therapy-failed-6-weeks": True,
        "doc.intrathecal-trial-dose-favorable": True,
        "doc.life-expectancy-at-least-3-months": True,
        "doc.noninvasive-pain-control-failed": True,
        "doc.intraspinal-opioid-trial-successful": True,
    }
    assert decide(policy, documented).indication.outcome is outcome


def test_implantable_pump_in_a_stay_without_part_a_gets_only_the_part_d_note(
    policy: Policy,
) -> None:
    """The institutional Part D note takes precedence: Part B is not also claimed."""
    decision = decide(
        policy,
        {
            "episode.pump_kind": "implantable",
            "episode.drug_family": "morphine",
            "order.setting": "institutional",
            "coverage.part_a_status": "exhausted",
            "doc.part-a-coverage-status": None,
        },
    )
    truths = {g.rule.id: g.truth for g in decision.guidance}
    assert truths["BILLING-PARTB-PARTD-INSTITUTIONAL"] is MET
    assert truths["BILLING-PARTB-PARTD"] is UNMET
