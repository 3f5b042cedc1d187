"""One pump episode + the patient's record → the facts the policy reads.

A fact is left out when the data it comes from could not be had (its prefetch key is
unavailable): the policy then sees it as unknown. A fact present with value None was
looked for and not found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import date
from functools import cache, partial

from coverage_policy.model import CodedItem, Evidence, FactValue, Policy
from fhir_mappings.allergies import drug_allergy
from fhir_mappings.conditions import facts_from_condition
from fhir_mappings.coverage import part_a_status
from fhir_mappings.dates import as_date
from fhir_mappings.devices import implanted_devices
from fhir_mappings.documentation import documentation_facts, stated_facts
from fhir_mappings.drugs import dosage_route
from fhir_mappings.encounters import face_to_face_date, last_visit_date, order_setting
from fhir_mappings.episodes import PumpEpisode
from fhir_mappings.evidence import evidence_summary, lab_name
from fhir_mappings.labs import c_peptide_facts, glucose_checks_per_day, lab_results, latest_value
from fhir_mappings.medication_history import insulin_mdi_days, oral_antispasmodic_trial_days
from fhir_mappings.patient import date_of_death
from fhir_mappings.prefetch_keys import (
    ALLERGIES,
    CONDITIONS,
    COVERAGE,
    DEVICES,
    ENCOUNTER,
    ENCOUNTERS,
    MEDICATION_REQUESTS,
    OBSERVATIONS,
    PATIENT,
    PROCEDURES,
    QUESTIONNAIRE_RESPONSES,
)
from fhir_mappings.record import PatientRecord

# Which prefetch keys each group of facts comes from.
FACT_SOURCES = {
    "patient.conditions": (CONDITIONS,),
    "patient.age_years": (PATIENT,),
    "patient.date_of_death": (PATIENT,),
    "patient.drug_allergy": (ALLERGIES,),
    "patient.implanted_devices": (DEVICES, CONDITIONS, PROCEDURES),
    "coverage.": (COVERAGE,),
    "lab.": (OBSERVATIONS,),
    "med.": (MEDICATION_REQUESTS,),
    "encounter.": (ENCOUNTERS,),
    "doc.": (QUESTIONNAIRE_RESPONSES,),
}


# Further prefetch keys a fact may read without being unknown when they are missing.
_ALSO_READ = {
    "order.setting": (ENCOUNTER, ENCOUNTERS),
    "episode.route": (MEDICATION_REQUESTS,),  # the active order a pump's drug came from
}

# Every prefetch key some fact reads: the only ones ever fetched.
KEYS_FACTS_READ = frozenset(
    key for keys in (*FACT_SOURCES.values(), *_ALSO_READ.values()) for key in keys
)


@cache
def sources_of(name: str) -> frozenset[str]:
    """The prefetch keys the data of the fact ``name`` comes from (without which it is
    unknown)."""
    return frozenset(
        k for prefix, ks in FACT_SOURCES.items() if name.startswith(prefix) for k in ks
    )


def prefetch_keys_read(fact_names: Iterable[str]) -> frozenset[str]:
    """The prefetch keys the data of these facts comes from."""
    keys: set[str] = set()
    for name in fact_names:
        keys |= sources_of(name)
        keys |= set(_ALSO_READ.get(name, ()))
    return frozenset(keys)


def facts_of_keys(keys: Iterable[str], fact_names: Iterable[str]) -> frozenset[str]:
    """Those of ``fact_names`` whose data comes from any of these prefetch keys (and is
    left out, unknown, when one of them could not be had)."""
    wanted = frozenset(keys)
    if not wanted:
        return frozenset()
    return frozenset(name for name in fact_names if sources_of(name) & wanted)


# The facts the policy's preconditions may be stated on, each read from the record alone:
# read before the episode's facts, so an order a precondition stops (a deceased
# patient's) reads nothing more of the record.
PRECONDITION_FACTS: dict[str, Callable[[PatientRecord], FactValue]] = {
    "patient.date_of_death": date_of_death,
}


def precondition_facts(policy: Policy, record: PatientRecord) -> dict[str, FactValue]:
    """The facts the policy's preconditions read, each left out (unknown) when its data
    could not be had."""
    facts = {name: PRECONDITION_FACTS[name](record) for name in sorted(policy.precondition_facts)}
    return _facts_with_data(facts, record)


def facts_settled_by_orders(episode: PumpEpisode) -> dict[str, FactValue]:
    """The facts the draft orders settle whatever the record holds (to know, before any
    patient data is read, which rules may apply). A pump ordered alone may take its drug
    from the record, and a pump kind the order does not give may be documented, so those
    stay unknown here."""
    facts = _episode_facts(episode)
    if episode.drug is None:
        del facts["episode.drug_family"]
    if episode.pump_kind is None:
        del facts["episode.pump_kind"]
    return facts


def _episode_facts(episode: PumpEpisode) -> dict[str, FactValue]:
    facts: dict[str, FactValue] = {}
    kind_source = (
        episode.device.reference
        if episode.device
        else (episode.drug_order.reference if episode.drug_order else "")
    )
    facts["episode.pump_kind"] = FactValue(
        episode.pump_kind,
        (
            Evidence(
                kind_source,
                evidence_summary("episode", "pump_kind", source=episode.pump_kind_source),
            ),
        )
        if episode.pump_kind
        else (),
    )
    drug = episode.drug
    facts["episode.drug_family"] = FactValue(
        drug.family if drug else None,
        (
            Evidence(
                episode.drug_source or kind_source,
                evidence_summary(
                    "episode", "drug", drug=drug.name, identified_by=drug.identified_by
                ),
            ),
        )
        if drug
        else (),
    )
    facts["order.hcpcs"] = FactValue(
        episode.hcpcs,
        (
            Evidence(
                episode.device.reference, evidence_summary("episode", "hcpcs", hcpcs=episode.hcpcs)
            ),
        )
        if episode.device
        else (),
    )
    return facts


def _route_fact(episode: PumpEpisode, record: PatientRecord) -> FactValue:
    """The drug's route: from the drug order, else the active order the drug came from."""
    sources = []
    if episode.drug_order is not None:
        sources.append((episode.drug_order.reference, episode.drug_order.resource))
    entry = record.resolve(episode.drug_source) if episode.drug_source else None
    if entry is not None:
        sources.append((entry.reference, entry.resource))
    for reference, order in sources:
        route, how = dosage_route(order)
        if route is not None:
            return FactValue(route, (Evidence(reference, how),))
    return FactValue(None)


def _requester(episode: PumpEpisode, user_reference: str | None) -> str | None:
    """The ordering practitioner: the order's requester, else the CDS Hooks user."""
    for order in episode.orders:
        reference = getattr(getattr(order.resource, "requester", None), "reference", None)
        if reference:
            return str(reference)
    return user_reference


def _age_years(record: PatientRecord, as_of: date) -> FactValue:
    for entry in record.of_type("Patient"):
        born = as_date(entry.resource.birthDate)
        if born is None:
            return FactValue(None)
        years = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))
        summary = evidence_summary("patient", "age", years=years, as_of=as_of.isoformat())
        return FactValue(years, (Evidence(entry.reference, summary),))
    return FactValue(None)


def facts_for_episode(
    episode: PumpEpisode,
    record: PatientRecord,
    policy: Policy,
    as_of: date,
    encounter_reference: str | None,
    user_reference: str | None = None,
    today: date | None = None,
    wanted: frozenset[str] | None = None,
) -> dict[str, FactValue]:
    """Every fact of the catalog this record can speak to, for one episode (``today``:
    the day of the call, by which documentation answers count).

    ``wanted``: the facts the decision may read (``facts_that_may_be_read``); the facts
    read from the rest of the record that are not among them are not derived. The
    order's own facts and the documentation answers always are."""
    current_encounter = _current_encounter(episode, encounter_reference)
    facts = _episode_facts(episode)
    facts["episode.route"] = _route_fact(episode, record)
    facts["order.setting"] = order_setting(episode.drug_order, current_encounter, record)
    requester = _requester(episode, user_reference)
    for names, derive in _record_facts(episode, record, as_of, requester, current_encounter):
        if wanted is None or not wanted.isdisjoint(names):
            facts.update(derive())
    documentation = documentation_facts(
        record, policy.documentation, policy.questionnaire_url, as_of, answered_by=today
    )
    facts.update(documentation)
    had = _facts_with_data(facts, record)
    # What the orderer answered stands in for what the record does not show.
    for name, stated in stated_facts(documentation, as_of).items():
        if had.get(name) is None or had[name].value is None:
            had[name] = replace(stated, stated=True)
    return had


def _record_facts(
    episode: PumpEpisode,
    record: PatientRecord,
    as_of: date,
    requester: str | None,
    current_encounter: str | None,
) -> list[tuple[tuple[str, ...], Callable[[], dict[str, FactValue]]]]:
    """The facts read from the patient's record, each with the names it gives."""
    family = episode.drug.family if episode.drug else None
    one = _one_fact
    return [
        # The same for every episode of the record: derived once.
        one("patient.conditions", lambda: FactValue(record.derived("conditions", _conditions))),
        one("patient.age_years", lambda: _age_years(record, as_of)),
        one("patient.drug_allergy", lambda: drug_allergy(record, family)),
        one(
            "patient.implanted_devices",
            lambda: FactValue(record.derived("implanted_devices", implanted_devices)),
        ),
        *(
            one(name, partial(_latest_lab_result, record, kind, as_of))
            for name, kind in _LATEST_LAB_FACTS.items()
        ),
        one("lab.glucose_checks_per_day_60d", lambda: glucose_checks_per_day(record, as_of)),
        (C_PEPTIDE_FACTS, lambda: c_peptide_facts(record, as_of)),
        one("med.insulin_mdi_days", lambda: insulin_mdi_days(record, as_of)),
        one(
            "med.oral_antispasmodic_trial_days",
            lambda: oral_antispasmodic_trial_days(record, as_of),
        ),
        one("encounter.last_visit_date", lambda: last_visit_date(record, as_of)),
        one("coverage.part_a_status", lambda: part_a_status(record, as_of)),
        one(
            "encounter.f2f_with_orderer_date",
            lambda: face_to_face_date(record, as_of, requester, current_encounter),
        ),
    ]


def _one_fact(
    name: str, derive: Callable[[], FactValue]
) -> tuple[tuple[str, ...], Callable[[], dict[str, FactValue]]]:
    return (name,), lambda: {name: derive()}


def _current_encounter(episode: PumpEpisode, encounter_reference: str | None) -> str | None:
    """The encounter the orders were placed in: an order's own, else the call's."""
    order_encounter = next(
        (
            getattr(o.resource, "encounter", None)
            for o in episode.orders
            if getattr(o.resource, "encounter", None)
        ),
        None,
    )
    return getattr(order_encounter, "reference", None) or encounter_reference


def _latest_lab_result(record: PatientRecord, kind: str, as_of: date) -> FactValue:
    return latest_value(lab_results(record, kind, as_of), lab_name(kind))


def _conditions(record: PatientRecord) -> tuple[CodedItem, ...]:
    """Every coded item the patient's Conditions give."""
    return tuple(
        item for entry in record.of_type("Condition") for item in facts_from_condition(entry)
    )


# The lab facts that are the latest result of one lab kind (``bindings/labs.json``).
_LATEST_LAB_FACTS = {
    "lab.hba1c_percent": "hba1c",
    "lab.creatinine_clearance_ml_min": "creatinine_clearance",
    "lab.body_weight_kg": "body_weight",
    "lab.bmi": "bmi",
}
# The facts ``c_peptide_facts`` gives together.
C_PEPTIDE_FACTS = ("lab.c_peptide_percent_of_lln", "lab.c_peptide_fasting_glucose_mg_dl")


def _facts_with_data(facts: dict[str, FactValue], record: PatientRecord) -> dict[str, FactValue]:
    """The facts whose source data the record has (``FACT_SOURCES``): a fact about data
    that was not had is left out, so it is unknown rather than found absent."""
    return {name: value for name, value in facts.items() if record.has_data(*sources_of(name))}
