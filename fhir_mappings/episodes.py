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
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_mappings.codes import HCPCS
from fhir_mappings.dates import as_date
from fhir_mappings.drugs import (
    DrugIdentity,
    dosage_route_kind,
    dosage_says_pump,
    identify_drug,
    medication_concept,
)
from fhir_mappings.r4 import (
    FhirModel,
    InvalidResource,
    ResourceProblem,
    parse_element,
    parse_resource,
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


class InvalidPumpOrder(InvalidResource):
    """A draft order that names an infusion pump or a drug the policy names is not valid
    FHIR: it cannot be left out, since it is what the request asks about."""


def _names_a_pump_or_pump_drug(raw: Mapping[str, Any]) -> bool:
    """Whether an order that failed validation still names a pump or a policy drug."""
    if raw.get("resourceType") == "DeviceRequest":
        concept = parse_element("CodeableConcept", raw.get("codeCodeableConcept") or {})
        pumps = binding("pumps")["hcpcs"]
        return any(s == HCPCS and c.upper() in pumps for s, c, _ in codings(concept))
    if raw.get("resourceType") == "MedicationRequest":
        concept = parse_element("CodeableConcept", raw.get("medicationCodeableConcept") or {})
        return identify_drug(concept) is not None
    return False


def parse_draft_orders(
    bundle: Mapping[str, Any], path: str
) -> tuple[list[DraftOrder], list[ResourceProblem]]:
    """The order resources of a context Bundle; invalid ones are left out and named.

    Raises ``InvalidPumpOrder`` for an invalid order that names a pump or a policy drug."""
    orders, problems = [], []
    for index, item in enumerate(bundle.get("entry") or []):
        raw = item.get("resource") if isinstance(item, dict) else None
        where = f"{path}.entry[{index}]"
        if not isinstance(raw, dict) or raw.get("resourceType") not in ORDER_TYPES:
            continue
        try:
            model = parse_resource(raw, where)
        except InvalidResource as exc:
            if _names_a_pump_or_pump_drug(raw):
                raise InvalidPumpOrder(exc.problem) from exc
            problems.append(exc.problem)
            continue
        reference = f"{raw['resourceType']}/{raw.get('id', index)}"
        orders.append(DraftOrder(reference, raw, model))
    return orders, problems


def pump_hcpcs(order: DraftOrder) -> tuple[str, str] | None:
    """(HCPCS code, pump kind) when a DeviceRequest orders an infusion pump."""
    if order.resource_type != "DeviceRequest":
        return None
    pumps = binding("pumps")["hcpcs"]
    for system, code, _ in codings(getattr(order.resource, "codeCodeableConcept", None)):
        if system == HCPCS and code.upper() in pumps:
            return code.upper(), pumps[code.upper()]["kind"]
    return None


def _references_in(value: Any) -> set[str]:
    """Every ``reference`` string anywhere in a resource's JSON."""
    found: set[str] = set()
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            found.add(value["reference"])
        for child in value.values():
            found |= _references_in(child)
    elif isinstance(value, list):
        for child in value:
            found |= _references_in(child)
    return found


def _references_between(a: DraftOrder, b: DraftOrder) -> bool:
    """Whether either order points at the other (basedOn, reasonReference, ...)."""
    return b.reference in _references_in(a.raw) or a.reference in _references_in(b.raw)


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
    pumps = [(o, pump_hcpcs(o)) for o in orders]
    pumps_found = [(o, found) for o, found in pumps if found]
    drugs = [
        (o, identify_drug(medication_concept(o.resource, record, draft)))
        for o in orders
        if o.resource_type == "MedicationRequest"
    ]
    named_drugs = [(o, d) for o, d in drugs if d is not None]
    paired: set[str] = set()
    # Linked orders pair first; a drug linked to one pump is never another pump's.
    links = {
        device.reference: [(o, d) for o, d in named_drugs if _references_between(device, o)]
        for device, _ in pumps_found
    }
    linked_anywhere = {o.reference for pairs in links.values() for o, _ in pairs}
    pump_codes = binding("pumps")["hcpcs"]
    # Pumps made for one drug (E0784: insulin, K0455: prostacyclin) choose their drug
    # first, so an unlinked general-purpose pump does not take it from them.
    by_priority = sorted(
        enumerate(pumps_found), key=lambda p: pump_codes[p[1][1][0]].get("drug_family") is None
    )
    pump_episodes: dict[int, PumpEpisode] = {}
    for position, (device, (hcpcs, kind)) in by_priority:
        implied = pump_codes[hcpcs].get("drug_family")
        unpaired = [
            (o, d)
            for o, d in named_drugs
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
            drug = DrugIdentity(implied, implied, f"pump code {hcpcs}")
        pump_episodes[position] = PumpEpisode(
            orders=(device, drug_order) if drug_order else (device,),
            device=device,
            drug_order=drug_order,
            hcpcs=hcpcs,
            pump_kind=kind,
            pump_kind_source=f"HCPCS {hcpcs}",
            drug=drug,
            drug_source=drug_source,
        )
    episodes = [pump_episodes[position] for position in range(len(pumps_found))]
    for order, drug in named_drugs:
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
