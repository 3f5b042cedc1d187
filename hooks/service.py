"""What a CDS service is: its discovery entry, its context schema and its handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from coverage_policy.model import Policy
from fhir_mappings import prefetch_keys as key
from fhir_mappings.codes import LOINC
from fhir_mappings.labs import lab_loinc_codes
from hooks.crd_dialect import SUPPORTED_CRD_VERSIONS
from hooks.decide import EpisodeDecision, OrderScope
from hooks.request import ClinicalInput, HookRequest

# Prefetch templates valid in CDS Hooks 2.0: only root-level primitive context tokens.
# Keys (``fhir_mappings.prefetch_keys``) are shared by every hook so a client can satisfy
# them once for all services. Observations: the LOINC codes the lab facts read.
PATIENT_PREFETCH: dict[str, str] = {
    key.PATIENT: "Patient/{{context.patientId}}",
    key.COVERAGE: "Coverage?patient={{context.patientId}}&status=active",
    key.CONDITIONS: "Condition?patient={{context.patientId}}",
    key.MEDICATION_REQUESTS: "MedicationRequest?patient={{context.patientId}}",
    key.OBSERVATIONS: "Observation?patient={{context.patientId}}&code="
    + ",".join(f"{LOINC}|{code}" for code in lab_loinc_codes()),
    key.ALLERGIES: "AllergyIntolerance?patient={{context.patientId}}",
    key.DEVICES: "Device?patient={{context.patientId}}",
    key.ENCOUNTERS: "Encounter?patient={{context.patientId}}&_sort=-date&_count=100",
    key.PROCEDURES: "Procedure?patient={{context.patientId}}",
    key.QUESTIONNAIRE_RESPONSES: "QuestionnaireResponse?patient={{context.patientId}}",
}
ENCOUNTER_PREFETCH = {key.ENCOUNTER: "Encounter/{{context.encounterId}}"}


@dataclass(frozen=True, slots=True)
class ConfigurationOption:
    """A CRD ``davinci-crd.configuration-options`` entry (dev-4/5)."""

    code: str
    type: str
    name: str
    description: str
    default: bool | int

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "default": self.default,
        }


def _no_reads(context: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """One CDS service: discovery metadata, the hook context it accepts, and its handler
    in two steps: ``scope`` finds what the call asks about from the orders alone (so
    that only the data deciding them is fetched), ``handler`` decides it."""

    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str
    prefetch: Mapping[str, str]
    context_schema: Mapping[str, Any]
    # (request, resources read for context_reads, policy, today) -> OrderScope
    scope: Callable[[HookRequest, Mapping[str, Any], Policy, date], OrderScope] = field(
        compare=False
    )
    # (request, scope, clinical input, environment) -> HookResult
    handler: Callable[[HookRequest, OrderScope, ClinicalInput, HookEnvironment], HookResult] = (
        field(compare=False)
    )
    configuration_options: tuple[ConfigurationOption, ...] = ()
    # References the context names that must be read before the scope is known.
    context_reads: Callable[[Mapping[str, Any]], list[str]] = field(
        default=_no_reads, compare=False
    )

    def discovery_entry(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "usageRequirements": self.usage_requirements,
            "prefetch": dict(self.prefetch),
            "extension": {
                "davinci-crd.version": list(SUPPORTED_CRD_VERSIONS),
                "davinci-crd.configuration-options": [
                    option.to_json() for option in self.configuration_options
                ],
            },
        }


@dataclass(frozen=True, slots=True)
class HookEnvironment:
    """What a handler needs besides the request: the clock, ids and deployment settings."""

    now: datetime  # timezone-aware, injected so responses are reproducible
    new_uuid: Callable[[], str]
    payer_name: str
    base_url: str
    policy: Policy  # loaded and checked at start-up
    # Where this call's decision page will be (None: no page, e.g. no audit trail).
    decision_page_url: str | None = None
    # The documentation app's launch URL, when the documentation card links to it
    # (CDS_DTR_CARD_LINK=on); None: DTR is launched from coverage-information only.
    documentation_app_url: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """A card of the response, as the audit trail and feedback know it."""

    uuid: str
    card_type: str  # the CRD response type (``source.topic.code``)
    indicator: str
    suggestion_uuids: tuple[str, ...]
    decision: int | None  # index into ``HookResult.decisions``; None for a call-wide card


@dataclass(frozen=True, slots=True)
class HookResult:
    """A handler's answer: the CDS Hooks response body, the decisions behind it, the
    coverage-assertion-id each decision was issued under (None when no system action
    carries it) and the cards issued."""

    response: dict[str, Any]
    decisions: tuple[EpisodeDecision, ...] = ()
    assertion_ids: tuple[str | None, ...] = ()
    cards: tuple[IssuedCard, ...] = ()
