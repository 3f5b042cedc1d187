"""FHIR resources → the facts the MCS051.01 rules read (allergies, devices, Part A,
face-to-face encounters, oral antispasmodic trials, routes, labs, documentation)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from coverage_policy.engine import code_in_valueset, evaluate_policy
from coverage_policy.loader import load_fact_catalog, load_policy
from coverage_policy.model import Outcome
from fhir_mappings.allergies import drug_allergy
from fhir_mappings.conditions import facts_from_condition
from fhir_mappings.coverage import active_coverages, part_a_status
from fhir_mappings.devices import facts_from_device, implanted_devices
from fhir_mappings.documentation import documentation_facts
from fhir_mappings.drugs import dosage_route, identify_drug
from fhir_mappings.encounters import face_to_face_date
from fhir_mappings.episodes import find_pump_episodes, parse_draft_orders
from fhir_mappings.facts import facts_for_episode
from fhir_mappings.labs import lab_results, latest_value
from fhir_mappings.medication_history import oral_antispasmodic_trial_days
from fhir_mappings.r4 import parse_resource
from fhir_mappings.record import PatientRecord, build_record
from tests.builders import record_of
from tests.conftest import FIXTURES

AS_OF = date(2026, 11, 20)
SCT = "http://snomed.info/sct"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def allergy(
    id_: str, text: str, clinical: str = "active", verification: str = "confirmed"
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": id_,
        "clinicalStatus": {"coding": [{"code": clinical}]},
        "verificationStatus": {"coding": [{"code": verification}]},
        "code": {"text": text},
        "patient": {"reference": "Patient/p"},
    }


@pytest.mark.parametrize(
    ("resource", "family", "expected"),
    [
        (allergy("a", "Baclofen"), "antispasmodic", True),
        (allergy("a", "Morphine sulfate"), "morphine", True),
        (allergy("a", "Baclofen", clinical="resolved"), "antispasmodic", False),
        (allergy("a", "Baclofen", verification="refuted"), "antispasmodic", False),
        (allergy("a", "Penicillin"), "antispasmodic", False),
        (allergy("a", "Baclofen"), None, None),
    ],
)
def test_drug_allergy_matches_the_ordered_drug_family(
    resource: dict[str, Any], family: str | None, expected: bool | None
) -> None:
    fact = drug_allergy(record_of(resource), family)
    assert fact.value is expected
    assert bool(fact.evidence) is bool(expected)


def test_drug_allergy_reads_the_reaction_substance() -> None:
    resource = allergy("a", "Opioid analgesic")
    resource["reaction"] = [
        {
            "substance": {"coding": [{"system": RX, "code": "7052", "display": "morphine"}]},
            "manifestation": [{"text": "Hives"}],
        }
    ]
    fact = drug_allergy(record_of(resource), "morphine")
    assert fact.value is True
    assert fact.evidence[0].reference == "AllergyIntolerance/a"


def device(id_: str, status: str, *, code: str | None = None, text: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": id_,
        "status": status,
        "type": {"text": text},
    }
    if code:
        resource["type"]["coding"] = [{"system": SCT, "code": code, "display": text}]
    return resource


def test_device_type_codes_and_kinds_with_status() -> None:
    record = record_of(
        device("pm", "active", code="706004007", text="Implantable cardiac pacemaker"),
        device("scs", "inactive", text="Spinal cord stimulator"),
        device("oops", "entered-in-error", text="Implanted infusion pump"),
    )
    items = [i for e in record.of_type("Device") for i in facts_from_device(e)]
    found = {(i.code, i.status) for i in items}
    assert ("706004007", "active") in found
    assert ("pacemaker", "active") in found
    assert ("neurostimulator", "inactive") in found
    assert not any(i.evidence.reference == "Device/oops" for i in items)


def test_external_or_worn_devices_are_not_implanted_devices() -> None:
    record = record_of(
        device("ins", "active", code="69805005", text="External insulin infusion pump (wearable)"),
        device("aed", "active", text="Automated external defibrillator"),
        device("wcd", "active", text="Wearable cardioverter defibrillator (LifeVest)"),
        device("icd", "active", code="72506001", text="Implantable defibrillator"),
        device("pump", "active", text="Implanted drug pump, external programmer"),
    )
    items = [i for e in record.of_type("Device") for i in facts_from_device(e)]
    assert {i.evidence.reference for i in items} == {"Device/icd", "Device/pump"}


def coverage(status: str, text: str, end: str | None = None) -> dict[str, Any]:
    period = {"start": "2020-01-01", **({"end": end} if end else {})}
    return {
        "resourceType": "Coverage",
        "id": "c",
        "status": status,
        "type": {"text": text},
        "beneficiary": {"reference": "Patient/p"},
        "payor": [{"display": "CMS"}],
        "period": period,
    }


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (coverage("active", "Medicare Part A"), "active"),
        (coverage("cancelled", "Medicare Part A"), "none"),
        (coverage("active", "Medicare Part A", end="2026-06-30"), "none"),
        (coverage("active", "Medicare Advantage"), None),
    ],
)
def test_part_a_status_from_coverage(resource: dict[str, Any], expected: str | None) -> None:
    assert part_a_status(record_of(resource), AS_OF).value == expected


def test_active_coverages_are_those_active_with_an_id() -> None:
    cancelled = {**coverage("cancelled", "Medicare Advantage"), "id": "old"}
    without_id = {k: v for k, v in coverage("active", "Medicare Advantage").items() if k != "id"}
    active = {**coverage("active", "Medicare Advantage"), "id": "ma"}
    assert active_coverages(record_of(cancelled, without_id, active)) == ["Coverage/ma"]
    assert active_coverages(record_of()) == []


def test_part_a_named_in_coverage_class() -> None:
    resource = coverage("active", "Medicare")
    resource["class"] = [{"type": {"coding": [{"code": "plan"}]}, "value": "Part A"}]
    assert part_a_status(record_of(resource), AS_OF).value == "active"


def encounter(
    id_: str, day: str, who: str, cls: str = "AMB", status: str = "finished"
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": id_,
        "status": status,
        "class": {"code": cls},
        "participant": [{"individual": {"reference": who}}],
        "period": {"start": f"{day}T09:00:00Z", "end": f"{day}T10:00:00Z"},
    }


def test_face_to_face_is_the_latest_finished_visit_with_the_orderer() -> None:
    record = record_of(
        encounter("old", "2026-03-01", "Practitioner/doc"),
        encounter("new", "2026-10-01", "https://ehr.example.org/fhir/Practitioner/doc"),
        encounter("other", "2026-11-01", "Practitioner/someone-else"),
        encounter("inpatient", "2026-11-02", "Practitioner/doc", cls="IMP"),
        encounter("planned", "2026-11-03", "Practitioner/doc", status="planned"),
        encounter("after", "2026-11-25", "Practitioner/doc"),
    )
    fact = face_to_face_date(record, AS_OF, "Practitioner/doc")
    assert fact.value == date(2026, 10, 1)
    assert fact.evidence[0].reference == "Encounter/new"
    assert face_to_face_date(record, AS_OF, None).value is None
    assert face_to_face_date(record, AS_OF, "Practitioner/nobody").value is None


def test_the_current_encounter_with_the_orderer_is_the_face_to_face() -> None:
    record = record_of(
        encounter("earlier", "2026-05-20", "Practitioner/doc"),
        encounter("current", "2026-11-20", "Practitioner/doc", status="in-progress"),
        encounter("elsewhere", "2026-11-19", "Practitioner/doc", status="in-progress"),
    )
    fact = face_to_face_date(record, AS_OF, "Practitioner/doc", "Encounter/current")
    assert fact.value == date(2026, 11, 20)
    assert fact.evidence[0].reference == "Encounter/current"
    # Another in-progress encounter is not the one the order is written in.
    assert face_to_face_date(record, AS_OF, "Practitioner/doc").value == date(2026, 5, 20)


def baclofen_order(id_: str, start: str, end: str | None = None, **extra: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": id_,
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "authoredOn": start,
        "medicationCodeableConcept": {"text": "baclofen 10 MG Oral Tablet"},
        "dosageInstruction": [{"route": {"text": "oral"}}],
    }
    if end:
        order["dispenseRequest"] = {"validityPeriod": {"start": start, "end": end}}
    order.update(extra)
    return order


def test_oral_antispasmodic_trial_joins_contiguous_orders() -> None:
    record = record_of(
        baclofen_order("a", "2026-06-01", "2026-07-01"),
        baclofen_order("b", "2026-07-01", "2026-08-10"),
    )
    fact = oral_antispasmodic_trial_days(record, AS_OF)
    assert fact.value == 70
    assert {e.reference for e in fact.evidence} == {"MedicationRequest/a", "MedicationRequest/b"}


def test_oral_antispasmodic_trial_takes_the_longest_span_across_a_gap() -> None:
    record = record_of(
        baclofen_order("a", "2026-01-01", "2026-01-21"),
        baclofen_order("b", "2026-03-01", "2026-04-10"),
    )
    assert oral_antispasmodic_trial_days(record, AS_OF).value == 40


def test_oral_antispasmodic_trial_from_supply_and_refills() -> None:
    order = baclofen_order("a", "2026-05-01")
    order["dispenseRequest"] = {
        "expectedSupplyDuration": {"value": 30, "unit": "days", "code": "d"},
        "numberOfRepeatsAllowed": 1,
    }
    assert oral_antispasmodic_trial_days(record_of(order), AS_OF).value == 60


def test_intrathecal_baclofen_is_not_an_oral_trial() -> None:
    order = baclofen_order("a", "2026-01-01", "2026-06-01")
    order["dosageInstruction"] = [{"route": {"text": "intrathecal"}}]
    assert oral_antispasmodic_trial_days(record_of(order), AS_OF).value is None


def test_no_antispasmodic_history_is_not_found() -> None:
    assert oral_antispasmodic_trial_days(record_of(), AS_OF).value is None


@pytest.mark.parametrize(
    ("dosage", "route"),
    [
        (
            {
                "route": {
                    "coding": [
                        {"system": SCT, "code": "58100008", "display": "Intra-arterial route"}
                    ]
                }
            },
            "intra-arterial",
        ),
        ({"route": {"coding": [{"system": SCT, "code": "72607000"}]}}, "intrathecal"),
        ({"text": "0.1 mg/kg/day by hepatic artery infusion pump"}, "intra-arterial"),
        ({"route": {"text": "Epidural"}}, "epidural"),
        ({"text": "by continuous infusion"}, None),
    ],
)
def test_dosage_route(dosage: dict[str, Any], route: str | None) -> None:
    order = parse_resource(
        {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
            "medicationCodeableConcept": {"text": "x"},
            "dosageInstruction": [dosage],
        },
        "test",
    )
    assert dosage_route(order)[0] == route


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ("Doxorubicin hydrochloride liposome injection", "other"),
        ("Doxorubicin 2 MG/ML Injectable Solution", "chemotherapy"),
        ("Amphotericin B liposome 50 MG Injection", "anti-infective"),
        ("Meperidine hydrochloride 10 MG/ML", "meperidine"),
        ("Hydromorphone 1 MG/ML", "opioid-other"),
        ("Hizentra 0.2 G/ML Subcutaneous Solution", "immune-globulin"),
        ("Treprostinil 10 MG/ML", "prostacyclin"),
        ("Ceftriaxone 1 G", None),
    ],
)
def test_drug_family_by_name(text: str, family: str | None) -> None:
    found = identify_drug(
        parse_resource({"resourceType": "Medication", "code": {"text": text}}, "t").code
    )
    assert (found.family if found else None) == family


def test_drug_family_by_rxnorm_code() -> None:
    concept = {"coding": [{"system": RX, "code": "3616"}]}
    found = identify_drug(parse_resource({"resourceType": "Medication", "code": concept}, "t").code)
    assert found is not None
    assert (found.family, found.identified_by) == ("inotrope", "RxNorm code 3616")


def observation(id_: str, loinc: str, value: float, code: str, day: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "code": code},
    }


def test_weight_is_the_most_recent_in_kilograms() -> None:
    record = record_of(
        observation("w1", "29463-7", 80, "kg", "2026-01-01"),
        observation("w2", "29463-7", 160, "[lb_av]", "2026-11-01"),
    )
    fact = latest_value(lab_results(record, "body_weight", AS_OF), "Body weight")
    assert fact.value == pytest.approx(72.57, abs=0.01)
    assert fact.evidence[0].reference == "Observation/w2"


def test_condition_must_be_active_and_confirmed() -> None:
    provisional = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/p"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "provisional"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C22.0"}]},
    }
    record = record_of(provisional)
    assert [i.status for i in facts_from_condition(record.of_type("Condition")[0])] == [
        "unconfirmed"
    ]


def response(
    id_: str,
    authored: str,
    answers: dict[str, Any],
    status: str = "completed",
    questionnaire: str | None = None,
) -> dict[str, Any]:
    policy = load_policy()
    return {
        "resourceType": "QuestionnaireResponse",
        "id": id_,
        "status": status,
        "questionnaire": questionnaire or policy.questionnaire_url,
        "authored": authored,
        "item": [{"linkId": k, "answer": [v]} for k, v in answers.items()],
    }


def test_documentation_most_recent_answer_wins() -> None:
    policy = load_policy()
    record = record_of(
        response("q1", "2026-10-01", {"intrathecal-trial-dose-favorable": {"valueBoolean": False}}),
        response(
            "q2",
            "2026-11-01",
            {
                "intrathecal-trial-dose-favorable": {"valueBoolean": True},
                "face-to-face-within-6-months": {"valueDate": "2026-09-02"},
            },
        ),
        response(
            "q3",
            "2026-11-10",
            {"intrathecal-trial-dose-favorable": {"valueBoolean": False}},
            status="in-progress",
        ),
        response(
            "q4",
            "2026-11-11",
            {"intrathecal-trial-dose-favorable": {"valueBoolean": False}},
            questionnaire="http://example.org/Questionnaire/other",
        ),
    )
    facts = documentation_facts(record, policy.documentation, policy.questionnaire_url, AS_OF)
    assert facts["doc.intrathecal-trial-dose-favorable"].value is True
    assert (
        facts["doc.intrathecal-trial-dose-favorable"].evidence[0].reference
        == "QuestionnaireResponse/q2"
    )
    assert facts["doc.face-to-face-within-6-months"].value == date(2026, 9, 2)
    assert facts["doc.life-expectancy-at-least-3-months"].value is None


# -- references in every form real records use ------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "Practitioner/doc",
        "https://ehr.example.org/fhir/Practitioner/doc",
        "https://ehr.example.org/fhir/Practitioner/doc/_history/3",
    ],
)
def test_requester_matches_encounter_participant_in_any_form(reference: str) -> None:
    record = record_of(encounter("e", "2026-10-01", "Practitioner/doc"))
    assert face_to_face_date(record, AS_OF, reference).value == date(2026, 10, 1)


def test_medication_reference_resolves_by_relative_absolute_and_urn() -> None:
    """A drug order naming its Medication by ``Type/id``, absolute URL or ``urn:uuid:``."""
    urn = "urn:uuid:0f5c2a6e-8f55-4a3e-9a4b-2f1f6f6c1a11"
    medication = {
        "resourceType": "Medication",
        "code": {"text": "Baclofen 2000 mcg/mL intrathecal"},
    }
    draft = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": urn, "resource": medication},
            {
                "fullUrl": "https://ehr.example.org/fhir/Medication/m1",
                "resource": {
                    **medication,
                    "id": "m1",
                    "code": {"text": "Morphine 25 mg/mL intrathecal"},
                },
            },
        ],
    }
    draft_record = build_record({"draftOrders": draft})
    for reference, family in (
        (urn, "antispasmodic"),
        ("Medication/m1", "morphine"),
        ("https://ehr.example.org/fhir/Medication/m1", "morphine"),
    ):
        order = {
            "resourceType": "MedicationRequest",
            "id": "mr",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
            "medicationReference": {"reference": reference},
            "dosageInstruction": [{"text": "intrathecal infusion by implanted pump"}],
        }
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}
        orders, _, _ = parse_draft_orders(bundle, "context.draftOrders")
        episodes = find_pump_episodes(orders, PatientRecord(), draft_record)
        assert episodes[0].drug is not None
        assert episodes[0].drug.family == family, reference


def test_encounter_resolves_by_urn_uuid() -> None:
    urn = "urn:uuid:5b0e7a52-4c0b-4a8e-9d7e-1c1f2e3d4a5b"
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": urn,
                "resource": {
                    "resourceType": "Encounter",
                    "status": "in-progress",
                    "class": {"code": "IMP"},
                },
            }
        ],
    }
    record = build_record({"encounters": bundle})
    assert record.resolve(urn) is not None


# -- a whole request's facts --------------------------------------------------------------


def fixture_facts(name: str, unavailable: dict[str, str] | None = None) -> dict[str, Any]:
    body = json.loads((FIXTURES / "requests" / name).read_text(encoding="utf-8"))
    return body_facts(body, unavailable)


def body_facts(body: dict[str, Any], unavailable: dict[str, str] | None = None) -> dict[str, Any]:
    """The facts of the first pump episode of a request body."""
    record = build_record(body["prefetch"], unavailable)
    draft = build_record({"draftOrders": body["context"]["draftOrders"]})
    orders, _, _ = parse_draft_orders(body["context"]["draftOrders"], "context.draftOrders")
    episode = find_pump_episodes(orders, record, draft)[0]
    return facts_for_episode(
        episode, record, load_policy(), AS_OF, "Encounter/enc-1", body["context"]["userId"]
    )


def test_spasticity_request_facts() -> None:
    facts = fixture_facts("order-sign__iip-spasticity-baclofen__covered.json")
    assert facts["episode.pump_kind"].value == "implantable"
    assert facts["episode.drug_family"].value == "antispasmodic"
    assert facts["episode.route"].value == "intrathecal"
    assert facts["med.oral_antispasmodic_trial_days"].value == 121
    # The order is written in the orderer's current (in-progress) visit: that is the F2F.
    assert facts["encounter.f2f_with_orderer_date"].value == date(2026, 11, 20)
    assert facts["patient.drug_allergy"].value is False
    device_sets = [
        load_policy().valuesets[name]
        for name in (
            "implanted-stimulators",
            "implanted-infusion-pumps",
            "implanted-devices-programmability-unclear",
        )
    ]
    assert not [
        i
        for i in facts["patient.implanted_devices"].value
        if any(code_in_valueset(vs, i.system, i.code) for vs in device_sets)
    ]
    assert facts["lab.body_weight_kg"].value == 72.5
    assert facts["patient.age_years"].value == 75
    assert facts["coverage.part_a_status"].value is None


def test_facts_of_unavailable_data_are_left_out() -> None:
    facts = fixture_facts(
        "order-sign__iip-spasticity-baclofen__covered.json",
        {"allergies": "not sent", "devices": "not sent", "coverage": "not sent"},
    )
    assert "patient.drug_allergy" not in facts
    assert "patient.implanted_devices" not in facts
    assert "coverage.part_a_status" not in facts
    decision = evaluate_policy(load_policy(), facts, AS_OF)
    assert decision is not None
    assert decision.outcome is Outcome.CONDITIONAL


def test_every_fact_produced_is_in_the_catalog() -> None:
    catalog = set(load_fact_catalog())
    facts = fixture_facts("order-sign__iip-liver-floxuridine-colorectal-liver-mets__covered.json")
    assert {name for name in facts if not name.startswith("doc.")} <= catalog


def test_policy_reads_only_catalog_and_documentation_facts() -> None:
    policy = load_policy()
    documentation = {f"doc.{item}" for item in policy.documentation}
    read = {fact for criterion in policy.criteria.values() for fact in criterion.facts}
    assert read <= set(load_fact_catalog()) | documentation


# -- implanted devices from Conditions and Procedures -------------------------------------

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
KIND = "http://infusion-pump-cds.org/fhir/CodeSystem/implanted-device-kind"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def status_condition(
    id_: str,
    system: str,
    code: str,
    display: str,
    clinical: str = "active",
    verification: str = "confirmed",
) -> dict[str, Any]:
    """A US Core problem-list Condition coded with a device status code or finding."""
    return {
        "resourceType": "Condition",
        "id": id_,
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": clinical}]},
        "verificationStatus": {
            "coding": [{"system": CONDITION_VERIFICATION, "code": verification}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": "Patient/p"},
        "recordedDate": "2024-03-02",
    }


def implant_procedure(
    id_: str, system: str, code: str, display: str, status: str = "completed"
) -> dict[str, Any]:
    """A Procedure as Synthea writes one (performedPeriod, urn:uuid subject)."""
    return {
        "resourceType": "Procedure",
        "id": id_,
        "status": status,
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": "urn:uuid:63731047-b5a9-4b05-a14b-8cf6507efc98"},
        "performedPeriod": {
            "start": "2016-04-26T09:21:52+00:00",
            "end": "2016-04-26T09:36:52+00:00",
        },
    }


def device_items(*resources: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (i.evidence.reference, i.system, i.code, i.status)
        for i in implanted_devices(record_of(*resources))
    }


def test_device_status_conditions_give_their_codes_and_kinds() -> None:
    items = device_items(
        status_condition("pm", ICD, "Z95.0", "Presence of cardiac pacemaker"),
        status_condition(
            "icd",
            ICD,
            "Z95.810",
            "Presence of automatic (implantable) cardiac defibrillator",
            clinical="resolved",
        ),
        status_condition(
            "ns", ICD, "Z96.82", "Presence of neurostimulator", verification="provisional"
        ),
        status_condition("ci", ICD, "Z96.21", "Cochlear implant status"),
        status_condition("sct", SCT, "441509002", "Cardiac pacemaker in situ"),
    )
    assert {
        ("Condition/pm", ICD, "Z95.0", "active"),
        ("Condition/pm", KIND, "pacemaker", "active"),
        ("Condition/icd", ICD, "Z95.810", "inactive"),
        ("Condition/icd", KIND, "defibrillator", "inactive"),
        ("Condition/ns", ICD, "Z96.82", "unconfirmed"),
        ("Condition/ns", KIND, "neurostimulator", "unconfirmed"),
        ("Condition/ci", KIND, "cochlear-implant", "active"),
        ("Condition/sct", SCT, "441509002", "active"),
        ("Condition/sct", KIND, "pacemaker", "active"),
    } <= items


def test_a_condition_naming_a_device_without_saying_it_is_present_gives_no_kind() -> None:
    """'Wandering atrial pacemaker' is a rhythm, not a device; 'pacemaker syndrome' too
    would need its status code to count."""
    items = device_items(status_condition("wap", SCT, "49260003", "Wandering atrial pacemaker"))
    assert items == {("Condition/wap", SCT, "49260003", "active")}


def test_implantation_procedures_give_their_codes_and_kinds() -> None:
    items = device_items(
        implant_procedure(
            "crtd",
            SCT,
            "447365002",
            "Insertion of biventricular implantable cardioverter defibrillator",
        ),
        implant_procedure(
            "scs",
            CPT,
            "63685",
            "Insertion or replacement of spinal neurostimulator pulse generator or receiver",
        ),
        implant_procedure(
            "hgns", SCT, "0", "Implantation of hypoglossal nerve stimulator", status="in-progress"
        ),
        implant_procedure(
            "vns-out",
            CPT,
            "64570",
            "Removal of cranial nerve (eg, vagus nerve) neurostimulator electrode array and"
            " pulse generator",
        ),
        implant_procedure("never", CPT, "69930", "Cochlear device implantation", status="not-done"),
    )
    assert ("Procedure/crtd", SCT, "447365002", "active") in items
    assert ("Procedure/crtd", KIND, "defibrillator", "active") in items
    assert ("Procedure/scs", KIND, "neurostimulator", "active") in items
    assert ("Procedure/hgns", KIND, "neurostimulator", "unconfirmed") in items
    assert ("Procedure/vns-out", KIND, "neurostimulator", "active") not in items
    assert not any(reference == "Procedure/never" for reference, *_ in items)


def test_procedure_evidence_says_what_was_done_and_when() -> None:
    record = record_of(
        implant_procedure(
            "crtd",
            SCT,
            "447365002",
            "Insertion of biventricular implantable cardioverter defibrillator",
        )
    )
    summaries = {i.evidence.summary for i in implanted_devices(record)}
    assert any("procedure on 2016-04-26" in s and "447365002" in s for s in summaries)


def with_prefetch(name: str, key: str, *resources: dict[str, Any]) -> dict[str, Any]:
    """A fixture request body with ``resources`` added to its ``key`` prefetch Bundle."""
    body = json.loads((FIXTURES / "requests" / name).read_text(encoding="utf-8"))
    bundle = body["prefetch"][key]
    bundle.setdefault("entry", []).extend({"resource": r} for r in resources)
    return body


def decide_body(body: dict[str, Any]) -> Any:
    decision = evaluate_policy(load_policy(), body_facts(body), AS_OF)
    assert decision is not None
    return decision


SPASTICITY_COVERED = "order-sign__iip-spasticity-baclofen__covered.json"


@pytest.mark.parametrize(
    ("key", "resource", "outcome"),
    [
        (
            "conditions",
            status_condition("pm", ICD, "Z95.0", "Presence of cardiac pacemaker"),
            Outcome.NOT_COVERED,
        ),
        (
            "conditions",
            status_condition("sct", SCT, "441509002", "Cardiac pacemaker in situ"),
            Outcome.NOT_COVERED,
        ),
        (
            "conditions",
            status_condition(
                "pm", ICD, "Z95.0", "Presence of cardiac pacemaker", clinical="resolved"
            ),
            Outcome.COVERED,
        ),
        (
            "conditions",
            status_condition("lvad", ICD, "Z95.811", "Presence of heart assist device"),
            Outcome.CONDITIONAL,
        ),
        (
            "conditions",
            status_condition(
                "ns", ICD, "Z96.82", "Presence of neurostimulator", verification="provisional"
            ),
            Outcome.CONDITIONAL,
        ),
        (
            "procedures",
            implant_procedure(
                "crtd",
                SCT,
                "447365002",
                "Insertion of biventricular implantable cardioverter defibrillator",
            ),
            Outcome.NOT_COVERED,
        ),
        (
            "procedures",
            implant_procedure(
                "vns",
                CPT,
                "64568",
                "Incision for implantation of cranial nerve (eg, vagus nerve) neurostimulator"
                " electrode array and pulse generator",
            ),
            Outcome.NOT_COVERED,
        ),
        (
            "procedures",
            implant_procedure("sacral", SCT, "0", "Implantation of sacral nerve stimulator"),
            Outcome.NOT_COVERED,
        ),
        (
            "procedures",
            implant_procedure(
                "pump", CPT, "62362", "Implantation of programmable intrathecal drug infusion pump"
            ),
            Outcome.NOT_COVERED,
        ),
        ("procedures", implant_procedure("appy", SCT, "80146002", "Appendectomy"), Outcome.COVERED),
        (
            "devices",
            device("pm", "unknown", code="706004007", text="Implantable cardiac pacemaker"),
            Outcome.CONDITIONAL,
        ),
    ],
    ids=lambda v: v.get("id") if isinstance(v, dict) else str(v),
)
def test_implanted_device_evidence_decides_the_contraindication(
    key: str, resource: dict[str, Any], outcome: Outcome
) -> None:
    """A covered spasticity request (no contraindication) plus one record of a device."""
    decision = decide_body(with_prefetch(SPASTICITY_COVERED, key, resource))
    assert decision.outcome is outcome
    requirement = next(r for r in decision.requirements if r.rule.id == "IIP-CONTRAINDICATIONS")
    result = next(
        r for r in requirement.results if r.criterion.id == "IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE"
    )
    if outcome is not Outcome.COVERED:
        assert any(e.reference.endswith(f"/{resource['id']}") for e in result.evidence)


def test_device_of_unclear_programmability_asks_for_the_orderers_word() -> None:
    lvad = status_condition("lvad", ICD, "Z95.811", "Presence of heart assist device")
    decision = decide_body(with_prefetch(SPASTICITY_COVERED, "conditions", lvad))
    requirement = next(r for r in decision.requirements if r.rule.id == "IIP-CONTRAINDICATIONS")
    assert requirement.missing is not None
    assert requirement.missing.criterion_ids() == ("IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE",)
    criterion = load_policy().criteria["IIP-CI-NO-OTHER-PROGRAMMABLE-DEVICE"]
    assert criterion.documentation == ("implanted-device-not-programmable",)


@pytest.mark.parametrize("key", ["devices", "conditions", "procedures"])
def test_implanted_devices_unknown_when_any_of_their_sources_could_not_be_had(key: str) -> None:
    facts = fixture_facts(SPASTICITY_COVERED, {key: "not sent"})
    assert "patient.implanted_devices" not in facts
