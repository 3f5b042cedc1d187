"""Draft orders → pump episodes: pairing, implied pumps, drug identification."""

from __future__ import annotations

from typing import Any

from fhir_mappings.drugs import identify_drug
from fhir_mappings.episodes import find_pump_episodes, parse_draft_orders
from fhir_mappings.r4 import parse_resource
from fhir_mappings.record import build_record
from tests.builders import record_of

HCPCS_VARIANTS = [
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "https://bluebutton.cms.gov/resources/codesystem/hcpcs",
]


def device(did: str, code: str, system: str = HCPCS_VARIANTS[0]) -> dict[str, Any]:
    return {
        "resourceType": "DeviceRequest",
        "id": did,
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p"},
    }


def drug(
    mid: str,
    display: str,
    text: str | None = None,
    code: str | None = None,
    status: str = "draft",
    **extra: Any,
) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": display}
    if code:
        concept["coding"] = [
            {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}
        ]
    resource = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": "Patient/p"},
        **extra,
    }
    if text:
        resource["dosageInstruction"] = [{"text": text}]
    return resource


def episodes_of(*orders: dict[str, Any], history: tuple[dict[str, Any], ...] = ()) -> list[Any]:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": o} for o in orders]}
    parsed, problems, _ = parse_draft_orders(bundle, "context.draftOrders")
    assert problems == []
    return find_pump_episodes(parsed, record_of(*history), build_record({"d": bundle}))


def test_every_hcpcs_system_variant_is_a_pump_order() -> None:
    for system in HCPCS_VARIANTS:
        (episode,) = episodes_of(device("d1", "E0781", system))
        assert (episode.hcpcs, episode.pump_kind) == ("E0781", "external")


def test_pump_and_drug_in_one_bundle_form_one_episode() -> None:
    (episode,) = episodes_of(
        device("d1", "E0783"), drug("m1", "Baclofen 2 MG/ML Injectable Solution")
    )
    assert [o.reference for o in episode.orders] == ["DeviceRequest/d1", "MedicationRequest/m1"]
    assert episode.pump_kind == "implantable"
    assert episode.drug is not None
    assert episode.drug.family == "antispasmodic"


def test_linked_drug_is_paired_with_its_pump() -> None:
    linked = drug("m2", "Heparin sodium 100 UNT/ML", basedOn=[{"reference": "DeviceRequest/d2"}])
    first, second = episodes_of(
        device("d1", "E0784"),
        device("d2", "E0781"),
        drug("m1", "insulin lispro 100 UNT/ML"),
        linked,
    )
    assert second.drug_order.reference == "MedicationRequest/m2"
    assert first.drug_order.reference == "MedicationRequest/m1"


def test_drug_linked_to_another_pump_is_not_paired_with_an_unlinked_one() -> None:
    vanco = drug(
        "m-vanco", "Vancomycin 1000 MG Injection", basedOn=[{"reference": "DeviceRequest/d2"}]
    )
    insulin_pump, vanco_pump = episodes_of(device("d1", "E0784"), device("d2", "E0781"), vanco)
    assert vanco_pump.drug_order is not None
    assert vanco_pump.drug_order.reference == "MedicationRequest/m-vanco"
    assert insulin_pump.drug_order is None
    assert insulin_pump.drug is not None
    assert insulin_pump.drug.family == "insulin"


def test_pump_made_for_a_drug_pairs_with_that_drug_first() -> None:
    heparin, insulin = (
        drug("m1", "Heparin sodium 100 UNT/ML"),
        drug("m2", "insulin aspart 100 UNT/ML"),
    )
    insulin_pump, other_pump = episodes_of(
        device("d1", "E0784"), device("d2", "E0781"), heparin, insulin
    )
    assert insulin_pump.drug_order.reference == "MedicationRequest/m2"
    assert other_pump.drug_order.reference == "MedicationRequest/m1"


def test_pump_alone_takes_the_drug_from_active_infusions() -> None:
    active = drug(
        "hist-1", "Morphine Sulfate 1 MG/ML", text="continuous infusion via pump", status="active"
    )
    (episode,) = episodes_of(device("d1", "E0779"), history=(active,))
    assert episode.drug is not None
    assert episode.drug.family == "morphine"
    assert episode.drug_source == "MedicationRequest/hist-1"
    assert episode.orders == (episode.device,)


def test_insulin_pump_alone_implies_insulin() -> None:
    (episode,) = episodes_of(device("d1", "E0784"))
    assert episode.drug is not None
    assert (episode.drug.family, episode.drug.identified_by) == ("insulin", "pump code E0784")


def test_drug_alone_implies_the_pump_only_when_its_dosage_says_so() -> None:
    assert episodes_of(drug("m1", "Vancomycin 1000 MG Injection", text="1 g IV q12h")) == []
    (episode,) = episodes_of(
        drug(
            "m1",
            "Vancomycin 1000 MG Injection",
            text="1 g intravenous q12h by ambulatory infusion pump",
        )
    )
    assert episode.device is None
    assert episode.pump_kind == "external"
    (intrathecal,) = episodes_of(drug("m2", "Baclofen", text="intrathecal via implanted pump"))
    assert intrathecal.pump_kind == "implantable"


def test_orders_of_anything_else_form_no_episode() -> None:
    assert episodes_of(device("d1", "E0250"), drug("m1", "Amoxicillin 500 MG Oral Capsule")) == []


def test_drug_identified_by_code_first_then_whole_word_name() -> None:
    by_code = parse_resource(drug("m", "Product X", code="11124"), "x").medicationCodeableConcept
    identity = identify_drug(by_code)
    assert identity is not None
    assert identity.identified_by == "RxNorm code 11124"
    by_name = parse_resource(drug("m", "VANCOMYCIN HCL 1 G"), "x").medicationCodeableConcept
    identity = identify_drug(by_name)
    assert identity is not None
    assert identity.identified_by == "ingredient name 'vancomycin'"
    partial = parse_resource(drug("m", "Insulinoma workup kit"), "x").medicationCodeableConcept
    assert identify_drug(partial) is None  # "insulin" only as a whole word


def test_meperidine_is_not_read_as_another_opioid() -> None:
    concept = parse_resource(
        drug("m", "Meperidine Hydrochloride 50 MG/ML"), "x"
    ).medicationCodeableConcept
    identity = identify_drug(concept)
    assert identity is not None
    assert identity.family == "meperidine"


def test_medication_reference_resolves_in_the_draft_bundle() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "med-1",
        "code": {"text": "Deferoxamine mesylate 500 MG Injection"},
    }
    order = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "draft",
        "intent": "order",
        "medicationReference": {"reference": "Medication/med-1"},
        "subject": {"reference": "Patient/p"},
    }
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": device("d1", "E0779")},
            {"resource": order},
            {"resource": medication},
        ],
    }
    parsed, _, _ = parse_draft_orders(bundle, "context.draftOrders")
    (episode,) = find_pump_episodes(parsed, record_of(), build_record({"d": bundle}))
    assert episode.drug is not None
    assert episode.drug.family == "deferoxamine"


def test_unlinked_drug_pumps_choose_their_drug_before_general_pumps() -> None:
    """[E0781, insulin, E0784, vancomycin]: insulin goes to E0784, vancomycin to E0781."""
    general, insulin_pump = episodes_of(
        device("d1", "E0781"),
        drug("m1", "insulin lispro 100 UNT/ML"),
        device("d2", "E0784"),
        drug("m2", "Vancomycin 1000 MG Injection"),
    )
    assert general.hcpcs == "E0781"
    assert general.drug_order.reference == "MedicationRequest/m2"
    assert insulin_pump.hcpcs == "E0784"
    assert insulin_pump.drug_order.reference == "MedicationRequest/m1"


def route(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}


def test_pump_alone_ignores_active_orders_that_only_name_a_route() -> None:
    """A subcutaneous or intravenous route alone does not say the drug runs by pump."""
    sc_heparin = drug(
        "hist-hep",
        "Heparin sodium 5000 UNT/ML Injectable Solution",
        status="active",
        dosageInstruction=[{"route": route("34206005", "Subcutaneous route")}],
    )
    (insulin_pump,) = episodes_of(device("d1", "E0784"), history=(sc_heparin,))
    assert insulin_pump.drug is not None
    assert (insulin_pump.drug.family, insulin_pump.drug_source) == ("insulin", None)
    sc_insulin = drug(
        "hist-ins",
        "insulin lispro 100 UNT/ML",
        status="active",
        dosageInstruction=[{"route": route("34206005", "Subcutaneous route")}],
    )
    (implant,) = episodes_of(device("d1", "E0783"), history=(sc_insulin,))
    assert implant.drug is None


def test_pump_alone_prefers_its_drug_family_and_a_route_of_its_kind() -> None:
    heparin_pump = drug(
        "hist-hep",
        "Heparin sodium 100 UNT/ML",
        text="continuous infusion via pump",
        status="active",
    )
    insulin_pump = drug(
        "hist-ins", "insulin aspart 100 UNT/ML", text="by insulin pump (CSII)", status="active"
    )
    (episode,) = episodes_of(device("d1", "E0784"), history=(heparin_pump, insulin_pump))
    assert episode.drug_source == "MedicationRequest/hist-ins"
    iv_morphine = drug(
        "hist-iv",
        "Morphine Sulfate 1 MG/ML",
        text="intravenous continuous infusion via pump",
        status="active",
    )
    it_morphine = drug(
        "hist-it",
        "Morphine Sulfate 25 MG/ML",
        text="intrathecal infusion via implanted pump",
        status="active",
    )
    (implant,) = episodes_of(device("d1", "E0783"), history=(iv_morphine, it_morphine))
    assert implant.drug_source == "MedicationRequest/hist-it"
    (external,) = episodes_of(device("d1", "E0779"), history=(it_morphine, iv_morphine))
    assert external.drug_source == "MedicationRequest/hist-iv"


def test_elastomeric_pump_or_gravity_drip_is_not_an_infusion_pump() -> None:
    for text in (
        "Vancomycin 1 g IV every 12 hours via disposable elastomeric pump (A4305)",
        "1 g intravenous q12h by gravity drip, continuous infusion over 2 hours",
    ):
        assert episodes_of(drug("m1", "Vancomycin 1000 MG Injection", text=text)) == []
    active = drug(
        "hist-1", "Vancomycin 1000 MG Injection", text="via elastomeric pump", status="active"
    )
    (episode,) = episodes_of(device("d1", "E0779"), history=(active,))
    assert episode.drug is None
