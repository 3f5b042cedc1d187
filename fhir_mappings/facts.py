"""One pump episode + the patient's record → the facts the policy reads.

A fact is left out when the data it comes from could not be had (its prefetch key is
unavailable): the policy then sees it as unknown. A fact present with value None was
looked for and not found.
"""

from __future__ import annotations

from datetime import date

from coverage_policy.model import Evidence, FactValue, Policy
from fhir_mappings.conditions import facts_from_condition
from fhir_mappings.documentation import documentation_facts
from fhir_mappings.encounters import last_visit_date, order_setting
from fhir_mappings.episodes import PumpEpisode
from fhir_mappings.labs import c_peptide_facts, glucose_checks_per_day, lab_results, latest_value
from fhir_mappings.medication_history import insulin_mdi_days
from fhir_mappings.record import PatientRecord

# Which prefetch keys each group of facts comes from.
FACT_SOURCES = {
    "patient.conditions": ("conditions",),
    "lab.": ("observations",),
    "med.": ("medicationRequests",),
    "encounter.": ("encounters",),
    "doc.": ("questionnaireResponses",),
}


def _episode_facts(episode: PumpEpisode) -> dict[str, FactValue]:
    facts: dict[str, FactValue] = {}
    kind_source = episode.device.reference if episode.device else (
        episode.drug_order.reference if episode.drug_order else "")
    facts["episode.pump_kind"] = FactValue(
        episode.pump_kind,
        (Evidence(kind_source, f"pump kind from {episode.pump_kind_source}"),) if episode.pump_kind else (),
    )
    drug = episode.drug
    facts["episode.drug_family"] = FactValue(
        drug.family if drug else None,
        (Evidence(episode.drug_source or kind_source, f"{drug.name}, identified by {drug.identified_by}"),)
        if drug
        else (),
    )
    facts["order.hcpcs"] = FactValue(
        episode.hcpcs,
        (Evidence(episode.device.reference, f"HCPCS {episode.hcpcs}"),) if episode.device else (),
    )
    return facts


def facts_for_episode(
    episode: PumpEpisode,
    record: PatientRecord,
    policy: Policy,
    as_of: date,
    encounter_reference: str | None,
) -> dict[str, FactValue]:
    """Every fact of the catalog this record can speak to, for one episode."""
    facts = _episode_facts(episode)
    order_encounter = next(
        (getattr(o.resource, "encounter", None) for o in episode.orders if getattr(o.resource, "encounter", None)),
        None,
    )
    facts["order.setting"] = order_setting(
        episode.drug_order,
        getattr(order_encounter, "reference", None) or encounter_reference,
        record,
    )
    conditions = tuple(
        item for entry in record.of_type("Condition") for item in facts_from_condition(entry)
    )
    facts["patient.conditions"] = FactValue(conditions)
    facts["lab.hba1c_percent"] = latest_value(lab_results(record, "hba1c", as_of), "HbA1c")
    facts["lab.creatinine_clearance_ml_min"] = latest_value(
        lab_results(record, "creatinine_clearance", as_of), "Creatinine clearance"
    )
    facts.update(c_peptide_facts(record, as_of))
    facts["lab.glucose_checks_per_day_60d"] = glucose_checks_per_day(record, as_of)
    facts["med.insulin_mdi_days"] = insulin_mdi_days(record, as_of)
    facts["encounter.last_visit_date"] = last_visit_date(record, as_of)
    documentation = documentation_facts(record, policy.documentation, policy.questionnaire_url, as_of)
    facts.update(documentation)
    stated_kind = documentation.get("doc.pump-kind")
    if facts["episode.pump_kind"].value is None and stated_kind and stated_kind.value:
        facts["episode.pump_kind"] = stated_kind  # the orderer answered the pump-kind question
    return {
        name: value
        for name, value in facts.items()
        if all(record.has_data(*keys) for prefix, keys in FACT_SOURCES.items() if name.startswith(prefix))
    }
