"""Draft orders → pump episodes (POLICY-BRIEF section 1).

A pump DeviceRequest and a MedicationRequest in the same draft Bundle form one episode
(linked by reference where present, else by being in the same Bundle); a pump ordered
alone takes its drug from the patient's active MedicationRequests whose dosage says
pump or infusion; a drug
order alone implies the pump when its dosage says it runs by pump. Orders of anything
else form no episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import SimpleNamespace
from typing import Any

from fhir_mappings.bundles import resources_in
from fhir_mappings.codes import HCPCS
from fhir_mappings.dates import as_date
from fhir_mappings.drugs import (
    DrugIdentity,
    dosage_route_kind,
    dosage_says_pump,
    identify_drug,
    medication_concept,
)
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.r4 import (
    FhirModel,
    InvalidResource,
    ResourceProblem,
    load_models,
    parse_element,
    parse_resource,
    shown_id,
)
from fhir_mappings.record import PatientRecord, binding, codings

ORDER_TYPES = frozenset(
    {
        "DeviceRequest",
        "MedicationRequest",
        "ServiceRequest",
        "NutritionOrder",
        "VisionPrescription",
        "CommunicationRequest",
    }
)


@dataclass(frozen=True, slots=True)
class DraftOrder:
    """An order from the request context, kept exactly as received for the system action."""

    reference: str  # "DeviceRequest/abc"
    raw: Mapping[str, Any]
    resource: FhirModel
    # Every reference in the order, found once: pairing asks each pump about each drug.
    references: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", _references_in(self.raw))

    @property
    def resource_type(self) -> str:
        return str(self.raw["resourceType"])

    @property
    def authored_on(self) -> date | None:
        return as_date(getattr(self.resource, "authoredOn", None))


@dataclass(frozen=True, slots=True)
class PumpEpisode:
    """One pump with the drug it gives, and the draft orders that asked for them."""

    orders: tuple[DraftOrder, ...]
    device: DraftOrder | None
    drug_order: DraftOrder | None
    hcpcs: str | None
    pump_kind: str | None
    pump_kind_source: str
    drug: DrugIdentity | None
    drug_source: str | None  # the MedicationRequest the drug was read from

    @property
    def label(self) -> str:
        """How clinicians name this episode on a card: drug and pump."""
        drug = self.drug.name if self.drug else "unspecified drug"
        kind = f"{self.pump_kind} " if self.pump_kind else ""
        code = f" ({self.hcpcs})" if self.hcpcs else ""
        return f"{drug} by {kind}infusion pump{code}"


@dataclass(frozen=True, slots=True)
class InvalidOrderInScope:
    """A draft order that is not valid FHIR but names an infusion pump, or a policy drug
    given by pump: what the request asks about, so it is answered (never left out
    silently), though it cannot be decided or carry a system action."""

    reference: str
    problem: ResourceProblem
    label: str  # how clinicians name it: "insulin by infusion pump order"


def _pump_code_in(raw: Mapping[str, Any]) -> str | None:
    if raw.get("resourceType") != "DeviceRequest":
        return None
    concept = parse_element("CodeableConcept", raw.get("codeCodeableConcept") or {})
    pumps = binding("pumps")["hcpcs"]
    found = (c.upper() for s, c, _ in codings(concept) if s == HCPCS and c.upper() in pumps)
    return next(found, None)


def _dosage_of_invalid_order(raw: Mapping[str, Any]) -> SimpleNamespace:
    """The dosage elements of an order that failed validation, each read on its own (an
    unreadable one is skipped), in the shape the dosage readers take."""
    dosages = raw.get("dosageInstruction")
    readable = [
        parse_element("Dosage", d)
        for d in (dosages if isinstance(dosages, list) else [])
        if isinstance(d, dict)
    ]
    return SimpleNamespace(dosageInstruction=[d for d in readable if d is not None])


def _in_scope_label(raw: Mapping[str, Any], bundle_orders_a_pump: bool) -> str | None:
    """How to name an order that failed validation when it is in scope, else None.

    In scope: a DeviceRequest for an infusion pump; a MedicationRequest for a policy drug
    that is ordered with a pump or whose dosage says it runs by pump. Anything else (an
    oral drug, a hospital bed) is out of scope, valid or not."""
    if (hcpcs := _pump_code_in(raw)) is not None:
        return f"infusion pump order ({hcpcs})"
    if raw.get("resourceType") != "MedicationRequest":
        return None
    concept = parse_element("CodeableConcept", raw.get("medicationCodeableConcept") or {})
    drug = identify_drug(concept)
    if drug is None:
        return None
    if bundle_orders_a_pump or dosage_says_pump(_dosage_of_invalid_order(raw)):
        return f"{drug.name} by infusion pump order"
    return None


def parse_draft_orders(
    bundle: Mapping[str, Any], path: str
) -> tuple[list[DraftOrder], list[ResourceProblem], list[InvalidOrderInScope]]:
    """The order resources of a context Bundle. Invalid ones are left out: named as
    problems, or, when in scope, returned apart so the answer can say they were not
    decided."""
    found = [(raw, where) for raw, _, where in resources_in(bundle, path)]
    orders_a_pump: bool | None = None  # looked at only when an order is invalid
    orders: list[DraftOrder] = []
    problems: list[ResourceProblem] = []
    invalid_in_scope: list[InvalidOrderInScope] = []
    for index, (raw, where) in enumerate(found):
        resource_type = raw.get("resourceType")
        if not isinstance(resource_type, str) or resource_type not in ORDER_TYPES:
            continue
        resource_id = raw.get("id", index)
        shown = resource_id if isinstance(resource_id, int) else shown_id(raw)
        reference = f"{resource_type}/{shown}"
        try:
            model = parse_resource(raw, where)
        except InvalidResource as exc:
            if orders_a_pump is None:
                orders_a_pump = any(_pump_code_in(other) for other, _ in found)
            label = _in_scope_label(raw, orders_a_pump)
            if label is None:
                problems.append(exc.problem)
            else:
                invalid_in_scope.append(InvalidOrderInScope(reference, exc.problem, label))
            continue
        orders.append(DraftOrder(reference, raw, model))
    return orders, problems, invalid_in_scope


def pump_hcpcs(order: DraftOrder) -> tuple[str, str] | None:
    """(HCPCS code, pump kind) when a DeviceRequest orders an infusion pump."""
    if order.resource_type != "DeviceRequest":
        return None
    pumps = binding("pumps")["hcpcs"]
    for system, code, _ in codings(getattr(order.resource, "codeCodeableConcept", None)):
        if system == HCPCS and code.upper() in pumps:
            return code.upper(), pumps[code.upper()]["kind"]
    return None


def _references_in(value: Any) -> frozenset[str]:
    """Every ``reference`` string anywhere in a resource's JSON."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str):
                found.add(reference)
            pending.extend(child for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            pending.extend(child for child in item if isinstance(child, dict | list))
    return frozenset(found)


def _references_between(a: DraftOrder, b: DraftOrder) -> bool:
    """Whether either order points at the other (basedOn, reasonReference, ...)."""
    return b.reference in a.references or a.reference in b.references


def _active_infusion_drug(
    record: PatientRecord, implied: str | None, pump_kind: str
) -> tuple[DrugIdentity, str] | None:
    """The drug a pump ordered alone gives, from the patient's active MedicationRequests.

    Only orders whose dosage says pump or infusion count (a subcutaneous or intravenous
    route alone does not). A pump made for one drug family (E0784: insulin) takes only
    that family; otherwise an order whose route suits the pump kind is preferred.
    """
    candidates: list[tuple[bool, int, DrugIdentity, str]] = []
    for index, entry in enumerate(record.of_type("MedicationRequest")):
        order = entry.resource
        if order.status not in ("active", "on-hold") or not dosage_says_pump(order):
            continue
        drug = identify_drug(medication_concept(order, record, None))
        if drug is None or (implied is not None and drug.family != implied):
            continue
        route_kind, _ = dosage_route_kind(order)
        candidates.append((route_kind not in (None, pump_kind), index, drug, entry.reference))
    if not candidates:
        return None
    _, _, drug, reference = min(candidates, key=lambda c: (c[0], c[1]))
    return drug, reference


def find_pump_episodes(
    orders: list[DraftOrder], record: PatientRecord, draft: PatientRecord
) -> list[PumpEpisode]:
    """Group the draft orders into pump episodes; orders of anything else are ignored."""
    pumps = [(o, found) for o in orders if (found := pump_hcpcs(o))]
    drugs = [
        (o, drug)
        for o in orders
        if o.resource_type == "MedicationRequest"
        and (drug := identify_drug(medication_concept(o.resource, record, draft))) is not None
    ]
    episodes, paired = _pump_order_episodes(pumps, drugs, record)
    return episodes + _drug_order_episodes(drugs, paired)


_PumpOrder = tuple[DraftOrder, tuple[str, str]]  # the order, (HCPCS code, pump kind)
_DrugOrder = tuple[DraftOrder, DrugIdentity]


def _pump_order_episodes(
    pumps: list[_PumpOrder], drugs: list[_DrugOrder], record: PatientRecord
) -> tuple[list[PumpEpisode], set[str]]:
    """One episode per pump order, in order, each with the drug it gives: a drug order
    linked to it, else one linked to no pump, else the patient's active infusion drug, else
    the drug the pump is made for. Also the references of the drug orders paired."""
    paired: set[str] = set()
    # Linked orders pair first; a drug linked to one pump is never another pump's.
    links = {
        device.reference: [(o, d) for o, d in drugs if _references_between(device, o)]
        for device, _ in pumps
    }
    linked_anywhere = {o.reference for pairs in links.values() for o, _ in pairs}
    pump_codes = binding("pumps")["hcpcs"]
    # Pumps made for one drug (E0784: insulin, K0455: prostacyclin) choose their drug
    # first, so an unlinked general-purpose pump does not take it from them.
    by_priority = sorted(
        enumerate(pumps), key=lambda p: pump_codes[p[1][1][0]].get("drug_family") is None
    )
    pump_episodes: dict[int, PumpEpisode] = {}
    for position, (device, (hcpcs, kind)) in by_priority:
        implied = pump_codes[hcpcs].get("drug_family")
        unpaired = [
            (o, d)
            for o, d in drugs
            if o.reference not in paired and o.reference not in linked_anywhere
        ]
        # A pump made for one drug pairs with that drug first.
        unpaired.sort(key=lambda pair: pair[1].family != implied)
        candidates = links[device.reference] or unpaired
        drug_order, drug = candidates[0] if candidates else (None, None)
        drug_source: str | None = drug_order.reference if drug_order else None
        if drug_order is not None:
            paired.add(drug_order.reference)
        elif (active := _active_infusion_drug(record, implied, kind)) is not None:
            drug, drug_source = active
        elif implied:
            how = evidence_summary("identified_by", "pump_code", hcpcs=hcpcs)
            drug = DrugIdentity(implied, implied, how)
        pump_episodes[position] = PumpEpisode(
            orders=(device, drug_order) if drug_order else (device,),
            device=device,
            drug_order=drug_order,
            hcpcs=hcpcs,
            pump_kind=kind,
            pump_kind_source=evidence_summary("episode", "hcpcs", hcpcs=hcpcs),
            drug=drug,
            drug_source=drug_source,
        )
    return [pump_episodes[position] for position in range(len(pumps))], paired


def _drug_order_episodes(drugs: list[_DrugOrder], paired: set[str]) -> list[PumpEpisode]:
    """An episode for each drug order no pump order took whose dosage says a pump gives
    it (the pump itself ordered elsewhere, or already in place)."""
    episodes = []
    for order, drug in drugs:
        if order.reference in paired or not dosage_says_pump(order.resource):
            continue
        route_kind, how = dosage_route_kind(order.resource)
        episodes.append(
            PumpEpisode(
                orders=(order,),
                device=None,
                drug_order=order,
                hcpcs=None,
                pump_kind=route_kind,
                pump_kind_source=how or "unknown",
                drug=drug,
                drug_source=order.reference,
            )
        )
    return episodes


def preload() -> None:
    """Load now what reading orders and records loads on first use: the R4B models of the
    order types, the code bindings, the drug name patterns. A server calls this before
    it forks, so no worker's first call pays for it."""
    from fhir_mappings import drugs, record

    load_models((*sorted(ORDER_TYPES), "CodeableConcept"))
    for name in ("devices", "drugs", "labs", "pumps", "routes"):
        binding(name)
    record._relevant_loinc_codes()
    drugs._families()
    drugs._oral_antispasmodic_patterns()
