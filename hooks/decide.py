"""The part every hook shares: orders → pump episodes → facts → decisions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from coverage_policy.engine import check_preconditions, evaluate_policy, facts_that_may_be_read
from coverage_policy.model import Decision, FactValue, Outcome, Policy, PreconditionResult
from fhir_mappings.coverage import active_coverages
from fhir_mappings.episodes import (
    DraftOrder,
    InvalidOrderInScope,
    PumpEpisode,
    find_pump_episodes,
    parse_draft_orders,
)
from fhir_mappings.facts import (
    facts_for_episode,
    facts_of_keys,
    facts_settled_by_orders,
    precondition_facts,
    prefetch_keys_read,
)
from fhir_mappings.prefetch_keys import COVERAGE, MEDICATION_REQUESTS
from fhir_mappings.r4 import ResourceProblem
from fhir_mappings.record import PatientRecord, build_record
from hooks.request import (
    ClinicalInput,
    CoverageProblem,
    DataUnavailable,
    HookRequest,
    retrieval_failures,
)

# Read for every decision, besides what the policy's preconditions read: the Coverage
# the coverage-information is about.
ALWAYS_READ = frozenset({COVERAGE})


@dataclass(frozen=True, slots=True)
class EpisodeDecision:
    """A pump episode, the decision on it, and the orders it is recorded on."""

    episode: PumpEpisode
    decision: Decision
    # The order's own facts the rules' scopes read (pump kind, drug family, HCPCS,
    # setting): codes only, recorded so a DTR form can decide again without the record.
    order_facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rule_id(self) -> str:
        return self.decision.rule_id

    @property
    def outcome(self) -> Outcome:
        return self.decision.outcome


@dataclass(frozen=True, slots=True)
class CoverageRef:
    reference: str  # "Coverage/abc" as the EHR knows it


@dataclass(frozen=True, slots=True)
class OrderScope:
    """What a call asks about, read from its orders alone, before any patient data."""

    bundle: Mapping[str, Any]  # the orders as a Bundle: draft orders, or those dispatched
    orders: tuple[DraftOrder, ...]
    problems: tuple[ResourceProblem, ...]  # invalid orders of anything else, left out
    invalid_in_scope: tuple[InvalidOrderInScope, ...]
    # The prefetch keys deciding these orders may read; empty when nothing is decided.
    prefetch_keys: frozenset[str]
    draft_record: PatientRecord  # the orders' Bundle read once, for both steps


@dataclass(frozen=True, slots=True)
class Deliberation:
    """Everything a response is built from."""

    decisions: tuple[EpisodeDecision, ...]
    # Episodes a policy precondition stops (the patient died before the order): no
    # coverage is decided on them.
    stopped: tuple[tuple[PumpEpisode, PreconditionResult], ...]
    coverage: CoverageRef | None
    record: PatientRecord
    problems: tuple[ResourceProblem, ...]
    invalid_in_scope: tuple[InvalidOrderInScope, ...] = ()
    # Prefetch keys a query failed to bring back, with why (``ClinicalInput.not_retrieved``).
    not_retrieved: Mapping[str, str] = field(default_factory=dict)


ORDER_FACT_PREFIXES = ("episode.", "order.")


def order_facts_of(facts: Mapping[str, FactValue]) -> dict[str, Any]:
    """The values of the order facts the orders and the record show (``episode.*``,
    ``order.*``): not those an answer stated, which a later answer may correct."""
    return {
        name: fact.value
        for name, fact in sorted(facts.items())
        if name.startswith(ORDER_FACT_PREFIXES) and isinstance(fact.value, str) and not fact.stated
    }


def _as_of(orders: Iterable[DraftOrder], today: date) -> date:
    """The order date: the earliest authoredOn among the orders, never after today."""
    dates = [d for d in (o.authored_on for o in orders) if d is not None]
    return min([*dates, today]) if dates else today


def decide_episode(
    episode: PumpEpisode,
    record: PatientRecord,
    policy: Policy,
    today: date,
    *,
    before_deciding: Mapping[str, FactValue],
    encounter_reference: str | None = None,
    user_reference: str | None = None,
    facts_not_retrieved: frozenset[str] = frozenset(),
    shown_only: bool = False,
) -> EpisodeDecision | PreconditionResult | None:
    """One pump episode decided as of its order date: the precondition that stops it
    (read from ``before_deciding``, ``precondition_facts``), its decision, or None when
    no rule of the policy applies. ``shown_only``: a fact the record does not show is
    unknown rather than absent (resources sent along with a request are not a record);
    what the orders themselves do not say stays said."""
    as_of = _as_of(episode.orders, today)
    precondition = check_preconditions(policy, before_deciding, as_of)
    if precondition is not None:
        return precondition
    wanted = facts_that_may_be_read(policy, facts_settled_by_orders(episode), as_of)
    facts = facts_for_episode(
        episode, record, policy, as_of, encounter_reference, user_reference, today, wanted
    )
    if shown_only:
        facts = {
            name: fact
            for name, fact in facts.items()
            if name.startswith(("doc.", *ORDER_FACT_PREFIXES)) or fact.value not in (None, ())
        }
    decision = evaluate_policy(policy, facts, as_of, facts_not_retrieved)
    return None if decision is None else EpisodeDecision(episode, decision, order_facts_of(facts))


def select_coverage(record: PatientRecord, hook_request: HookRequest) -> CoverageRef | None:
    """The one active Coverage the request carries; a CRD request must carry exactly one.

    A Coverage without an id cannot be referenced by the coverage-information extension,
    so it does not count."""
    active = active_coverages(record)
    if len(active) == 1:
        return CoverageRef(active[0])
    if hook_request.is_crd_request and not active and not record.has_data(COVERAGE):
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
    return CoverageRef(active[0]) if active else None


def find_scope(bundle: Mapping[str, Any], path: str, policy: Policy, today: date) -> OrderScope:
    """The orders of ``bundle``, which of them are in scope, and the patient data deciding
    them may read (minimum necessary: nothing when no order is in scope)."""
    orders, problems, invalid_in_scope = parse_draft_orders(bundle, path)
    draft_record = build_record({"draftOrders": bundle})
    episodes = find_pump_episodes(orders, PatientRecord(), draft_record)
    facts: set[str] = set()
    for episode in episodes:
        known = facts_settled_by_orders(episode)
        facts |= facts_that_may_be_read(policy, known, _as_of(episode.orders, today))
    keys = set(prefetch_keys_read(facts))
    if episodes:
        keys |= ALWAYS_READ | prefetch_keys_read(policy.precondition_facts)
    if any(episode.drug_order is None for episode in episodes):
        keys.add(MEDICATION_REQUESTS)  # a pump ordered alone takes its drug from them
    return OrderScope(
        bundle=bundle,
        orders=tuple(orders),
        problems=tuple(problems),
        invalid_in_scope=tuple(invalid_in_scope),
        prefetch_keys=frozenset(keys),
        draft_record=draft_record,
    )


def deliberate(
    hook_request: HookRequest,
    clinical: ClinicalInput,
    scope: OrderScope,
    policy: Policy,
    today: date,
) -> Deliberation:
    """Decide every pump episode among the orders in ``scope`` on the patient's record."""
    record = build_record(clinical.data, clinical.unavailable)
    episodes = find_pump_episodes(list(scope.orders), record, scope.draft_record)
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
    # Read before anything else of the record: an order they stop reads nothing more.
    before_deciding = precondition_facts(policy, record)
    # Data that a query failed to bring back or that came unreadable (not merely data the
    # EHR did not send): the record adds the Bundles it cannot read to what prefetch found.
    not_retrieved = retrieval_failures(record.unavailable)
    facts_not_retrieved = facts_of_keys(not_retrieved, policy.facts)
    decisions, stopped = [], []
    for episode in episodes:
        decided = decide_episode(
            episode,
            record,
            policy,
            today,
            before_deciding=before_deciding,
            encounter_reference=encounter_reference,
            user_reference=user_reference,
            facts_not_retrieved=facts_not_retrieved,
        )
        if isinstance(decided, PreconditionResult):
            stopped.append((episode, decided))
        elif decided is not None:
            decisions.append(decided)
    return Deliberation(
        decisions=tuple(decisions),
        stopped=tuple(stopped),
        coverage=coverage,
        record=record,
        problems=(*scope.problems, *record.problems),
        invalid_in_scope=scope.invalid_in_scope,
        not_retrieved=not_retrieved,
    )
