"""The policy's domain types: facts in, decisions out. All immutable."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any


class Truth(StrEnum):
    """Three-valued truth of a criterion (Kleene logic)."""

    MET = "met"
    UNMET = "unmet"
    UNKNOWN = "unknown"


class Outcome(StrEnum):
    """A pump episode's coverage outcome, named as CRD's ``covered`` codes."""

    COVERED = "covered"
    NOT_COVERED = "not-covered"
    CONDITIONAL = "conditional"
    INDETERMINATE = "indeterminate"


class RuleKind(StrEnum):
    INDICATION = "indication"  # exactly one decides an episode: the first that applies
    REQUIREMENT = "requirement"  # every one that applies must also be satisfied
    GUIDANCE = "guidance"  # reported to the clinician; never changes the outcome


@dataclass(frozen=True, slots=True)
class Evidence:
    """A FHIR resource that a fact came from, and what it showed (no names, no free text)."""

    reference: str  # "Observation/abc" as the record names it
    summary: str  # "C-peptide 0.5 ng/mL (lab lower limit 0.8) on 2026-10-01"


@dataclass(frozen=True, slots=True)
class CodedItem:
    """One coded record (a diagnosis, a device) with its clinical status."""

    system: str
    code: str
    display: str
    status: str  # "active" | "inactive" | "refuted" | "unconfirmed"
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class FactValue:
    """A fact that could be looked for. ``value`` None means looked for and not found.

    A fact missing from the facts mapping altogether means its data could not be had.
    """

    value: Any
    evidence: tuple[Evidence, ...] = ()
    # Stated by a documentation answer where the record does not show it (the item's
    # ``states``): it decides like the record fact, but is not what the order says.
    stated: bool = False


@dataclass(frozen=True, slots=True)
class Period:
    start: date | None = None
    end: date | None = None  # exclusive

    def contains(self, day: date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day < self.end)


@dataclass(frozen=True, slots=True)
class Citation:
    source: str  # a key of Policy.sources
    section: str

    def render(self, sources: dict[str, Source]) -> str:
        return f"{sources[self.source].label}, {self.section}"


@dataclass(frozen=True, slots=True)
class Source:
    key: str
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class Criterion:
    id: str
    text: str  # clinician-facing, plain clinical language
    citations: tuple[Citation, ...]
    facts: tuple[str, ...]
    logic: dict[str, Any]
    documentation: tuple[str, ...] = ()  # documentation item ids that can satisfy it


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: RuleKind
    title: str
    citations: tuple[Citation, ...]
    applies_when: dict[str, Any]
    decides: dict[str, Any]  # logic over {"criterion": id}
    criteria: tuple[str, ...]  # every criterion shown for this rule, deciding or advisory
    # outcome (or truth, for guidance) -> clinician text; a guidance rule may add
    # "<truth>-if-not-covered", shown instead when the indication is not covered
    messages: dict[str, str]
    alternatives: tuple[str, ...] = ()
    effective: Period = field(default_factory=Period)
    deciding: frozenset[str] = frozenset()  # the criteria ``decides`` combines
    scope_facts: frozenset[str] = frozenset()  # the facts ``applies_when`` reads


@dataclass(frozen=True, slots=True)
class Precondition:
    """Checked on every order before anything is decided: when ``when`` is met on the
    record, no coverage is decided and the order gets ``outcome`` instead (the deceased
    patient's order: a card saying so, and no coverage information)."""

    id: str
    text: str  # what it says and why, for the policy's readers
    citations: tuple[Citation, ...]
    fact: str  # the record fact it is stated on; ``when`` reads it alone
    when: dict[str, Any]  # logic over ``fact``, judged as of the order date
    outcome: str  # "deceased"


@dataclass(frozen=True, slots=True)
class PreconditionResult:
    """A precondition that holds for an order, with the value of its fact (the date of
    death) and the evidence showing it."""

    precondition: Precondition
    value: Any
    evidence: tuple[Evidence, ...]

    @property
    def outcome(self) -> str:
        return self.precondition.outcome


@dataclass(frozen=True, slots=True)
class DocumentationItem:
    id: str
    text: str
    answer_type: str  # "boolean" | "choice" | "date" | "decimal"
    options: tuple[tuple[str, str], ...] = ()  # (code, display) for choice items
    doc_type: str = "clinical"  # "clinical" | "admin": who supplies it (CRD doc-needed)
    unit: str | None = None  # UCUM unit of a decimal answer
    states: tuple[str, ...] = ()  # record facts the answer stands in for (fhir_mappings)

    def decimal_answer(self, value: Any, unit: Any = None) -> float | int | None:
        """The amount a decimal answer gives: a number, not negative, in the item's unit
        (a quantity in another unit, or with a unit this item has none for, gives none).
        One rule for the DTR forms and for answers read from the record."""
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            return None
        if unit is not None and unit != self.unit:
            return None
        return value


@dataclass(frozen=True, slots=True)
class Alternative:
    id: str
    label: str
    hcpcs: str | None
    display: str
    action: str  # "replace-device" | "remove-device"


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    version: str
    title: str
    url: str
    effective: Period
    sources: dict[str, Source]
    facts: dict[str, dict[str, Any]]
    valuesets: dict[str, dict[str, Any]]
    criteria: dict[str, Criterion]
    rules: tuple[Rule, ...]
    documentation: dict[str, DocumentationItem]
    alternatives: dict[str, Alternative]
    questionnaire_id: str
    questionnaire_url: str  # canonical|version
    questionnaire_title: str
    links: tuple[Source, ...]
    preconditions: tuple[Precondition, ...] = ()
    # Each rule by its id, the one way a rule is looked up (ids are unique: the loader
    # refuses a policy otherwise). Worked out from ``rules`` whenever a policy is built,
    # so one built with other rules (``dataclasses.replace``) maps those.
    rules_by_id: Mapping[str, Rule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules_by_id", {rule.id: rule for rule in self.rules})

    @property
    def precondition_facts(self) -> frozenset[str]:
        """The facts read before anything is decided (and so for every order)."""
        return frozenset(p.fact for p in self.preconditions)


@dataclass(frozen=True, slots=True)
class CriterionResult:
    criterion: Criterion
    truth: Truth
    evidence: tuple[Evidence, ...]
    deciding: bool  # False for advisory criteria shown but not part of the decision
    # False when the truth is unknown because data it reads could not be retrieved (a
    # failed or timed-out query): not checked, which documentation cannot settle.
    checked: bool = True
    # For an unknown criterion that documentation can settle: its truth once its items
    # are answered so that they hold, and so that they do not (the record as it is).
    # A DTR form decides on these where the record itself is not at hand.
    if_answered: tuple[Truth, Truth] | None = None


@dataclass(frozen=True, slots=True)
class RecordedCriterion:
    """What an earlier decision recorded of one criterion (the audit trail keeps it)."""

    truth: Truth
    checked: bool = True
    if_answered: tuple[Truth, Truth] | None = None  # as ``CriterionResult.if_answered``


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: Rule
    truth: Truth
    outcome: Outcome
    results: tuple[CriterionResult, ...]
    missing: Needs | None  # what would settle an unknown decision, as an all/any tree
    scope_evidence: tuple[Evidence, ...] = ()  # why the rule applies (drug, pump kind)


@dataclass(frozen=True, slots=True)
class Needs:
    """The unknown part of a decision: criteria to document, all of them or any one."""

    mode: str  # "all" | "any"
    items: tuple[str | Needs, ...]  # criterion ids or nested needs

    def criterion_ids(self) -> tuple[str, ...]:
        ids: list[str] = []
        for item in self.items:
            for cid in item.criterion_ids() if isinstance(item, Needs) else (item,):
                if cid not in ids:
                    ids.append(cid)
        return tuple(ids)


@dataclass(frozen=True, slots=True)
class Decision:
    """The decision on one pump episode, with every rule result behind it."""

    policy_id: str
    policy_version: str
    outcome: Outcome
    indication: RuleResult
    requirements: tuple[RuleResult, ...]
    guidance: tuple[RuleResult, ...]
    as_of: date

    @property
    def rule_id(self) -> str:
        return self.indication.rule.id

    @property
    def deciding_results(self) -> tuple[RuleResult, ...]:
        return (self.indication, *self.requirements)

    @property
    def rule_results(self) -> tuple[RuleResult, ...]:
        """Every rule result: the indication, the requirements, then the guidance."""
        return (*self.deciding_results, *self.guidance)

    def criterion_rows(
        self, rules: Iterable[RuleResult] | None = None
    ) -> Iterator[tuple[RuleResult, CriterionResult]]:
        """Each criterion result with the result of its rule, rule by rule, over
        ``rules`` (default: the deciding rules, indication then requirements)."""
        for rule in self.deciding_results if rules is None else rules:
            for result in rule.results:
                yield rule, result

    def against_coverage(self) -> Iterator[CriterionResult]:
        """The deciding criteria unmet in a rule that makes the order not covered."""
        for rule, result in self.criterion_rows():
            unmet = result.deciding and result.truth is Truth.UNMET
            if unmet and rule.outcome is Outcome.NOT_COVERED:
                yield result

    @property
    def not_checked(self) -> tuple[CriterionResult, ...]:
        """Deciding criteria left unknown by data that could not be retrieved."""
        return tuple(r for _, r in self.criterion_rows() if r.deciding and not r.checked)

    @property
    def provisional(self) -> bool:
        """An outcome that data not retrieved could still change."""
        return self.outcome is not Outcome.NOT_COVERED and bool(self.not_checked)
