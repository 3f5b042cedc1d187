"""The part every hook shares: orders → pump episodes → facts → decisions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from coverage_policy.engine import evaluate_policy
from coverage_policy.model import Decision, Policy
from fhir_mappings.dates import as_date
from fhir_mappings.episodes import (
    DraftOrder,
    InvalidPumpOrder,
    PumpEpisode,
    find_pump_episodes,
    parse_draft_orders,
)
from fhir_mappings.facts import facts_for_episode
from fhir_mappings.r4 import ResourceProblem
from fhir_mappings.record import PatientRecord, build_record
from hooks.request import (
    ClinicalInput,
    CoverageProblem,
    DataUnavailable,
    HookRequest,
    InvalidOrder,
)


@dataclass(frozen=True, slots=True)
class EpisodeDecision:
    """A pump episode, the decision on it, and the orders it is recorded on."""

    episode: PumpEpisode
    decision: Decision

    @property
    def rule_id(self) -> str:
        return self.decision.rule_id

    @property
    def outcome(self) -> Any:
        return self.decision.outcome


@dataclass(frozen=True, slots=True)
class CoverageRef:
    reference: str  # "Coverage/abc" as the EHR knows it


@dataclass(frozen=True, slots=True)
class Deliberation:
    """Everything a response is built from."""

    decisions: tuple[EpisodeDecision, ...]
    deceased: tuple[tuple[PumpEpisode, date], ...]
    coverage: CoverageRef | None
    record: PatientRecord
    problems: tuple[ResourceProblem, ...]
    as_of: date


def _as_of(orders: Iterable[DraftOrder], today: date) -> date:
    """The order date: the earliest authoredOn among the orders, never after today."""
    dates = [d for d in (o.authored_on for o in orders) if d is not None]
    return min([*dates, today]) if dates else today


def select_coverage(record: PatientRecord, hook_request: HookRequest) -> CoverageRef | None:
    """The one active Coverage the request carries; a CRD request must carry exactly one.

    A Coverage without an id cannot be referenced by the coverage-information extension,
    so it does not count."""
    active = [
        e for e in record.of_type("Coverage") if e.resource.status == "active" and e.resource.id
    ]
    if len(active) == 1:
        return CoverageRef(active[0].reference)
    if hook_request.is_crd_request and not active and not record.has_data("coverage"):
        raise DataUnavailable(
            "The patient's Coverage is neither in prefetch 'coverage' nor retrievable "
            f"({record.unavailable['coverage']})",
            "prefetch.coverage",
        )
    if hook_request.is_crd_request:
        if not active:
            raise CoverageProblem(
                "No active Coverage with an id for the patient in prefetch 'coverage' "
                "(CRD hook-13)",
                "prefetch.coverage",
            )
        raise CoverageProblem(
            f"{len(active)} active Coverages in prefetch 'coverage'; CRD expects the one "
            "relevant to this payer (CRD hook-13)",
            "prefetch.coverage",
        )
    return CoverageRef(active[0].reference) if active else None


def _deceased_on(record: PatientRecord) -> date | None:
    for entry in record.of_type("Patient"):
        patient = entry.resource
        if patient.deceasedDateTime is not None:
            return as_date(patient.deceasedDateTime)
        if patient.deceasedBoolean:
            return date.min
    return None


def parse_orders(
    bundle: Mapping[str, Any], path: str
) -> tuple[list[DraftOrder], list[ResourceProblem]]:
    """The request's orders; an invalid pump order makes the request unanswerable."""
    try:
        return parse_draft_orders(bundle, path)
    except InvalidPumpOrder as exc:
        problem = exc.problem
        raise InvalidOrder(
            f"{problem.resource_type}/{problem.resource_id} is not valid FHIR R4: "
            f"{problem.message}",
            problem.path,
        ) from exc


def deliberate(
    hook_request: HookRequest,
    clinical: ClinicalInput,
    orders: list[DraftOrder],
    order_problems: list[ResourceProblem],
    policy: Policy,
    today: date,
    draft_bundle: Mapping[str, Any] | None = None,
) -> Deliberation:
    """Decide every pump episode among ``orders`` on the patient's record."""
    record = build_record(clinical.data, clinical.unavailable)
    draft_record = build_record({"draftOrders": draft_bundle or {}})
    episodes = find_pump_episodes(orders, record, draft_record)
    if episodes and not clinical.data:
        reasons = "; ".join(sorted(set(clinical.unavailable.values())))
        raise DataUnavailable(
            f"No patient data: the prefetch holds none and it could not be fetched ({reasons})",
            "prefetch",
        )
    coverage = select_coverage(record, hook_request) if episodes else None
    encounter_id = hook_request.context.get("encounterId")
    encounter_reference = f"Encounter/{encounter_id}" if isinstance(encounter_id, str) else None
    user_id = hook_request.context.get("userId")
    user_reference = user_id if isinstance(user_id, str) else None
    deceased_on = _deceased_on(record)
    decisions, deceased = [], []
    for episode in episodes:
        as_of = _as_of(episode.orders, today)
        if deceased_on is not None and deceased_on <= as_of:
            deceased.append((episode, deceased_on))
            continue
        facts = facts_for_episode(
            episode, record, policy, as_of, encounter_reference, user_reference
        )
        decision = evaluate_policy(policy, facts, as_of)
        if decision is not None:
            decisions.append(EpisodeDecision(episode, decision))
    return Deliberation(
        decisions=tuple(decisions),
        deceased=tuple(deceased),
        coverage=coverage,
        record=record,
        problems=(*order_problems, *record.problems),
        as_of=_as_of(orders, today),
    )
