"""Strict validation of the CDS Hooks responses this service emits.

Every test response is checked with :func:`validate_cds_response`. It applies
``tests/schemas/cds_hooks_response.schema.json`` (CDS Hooks 2.0 response shape, the CDS Hooks
logical-model invariants cds-resp-2..6 and the CRD base response profile) and then the rules
a JSON Schema cannot express:

- no ``null``, ``""``, ``[]`` or ``{}`` anywhere in the body, action resources included; the
  one exception is ``"cards": []`` (CDS Hooks "Use of JSON");
- cds-resp-1: at most one ``isRecommended`` suggestion when ``selectionBehavior`` is
  ``at-most-one``;
- ``source.topic`` from the CRD response types, in the code system of the CRD version
  (CRD resp-5);
- card and suggestion uuids unique across the response (they key feedback and audit);
- every action resource parses as FHIR (``fhir.resources.R4B``);
- the Da Vinci CRD ``ext-coverage-information`` extension: only on a system action of type
  ``update`` (resp-25), the sub-extensions, value types, codes and cardinalities of the CRD
  version, the invariants crd-ci-q1..q9, one coverage-assertion-id per Coverage (resp-32/33),
  and no clinical or administrative documentation request on secondary hooks (hook-19).

Problems are collected, not raised one at a time: :class:`ResponseInvalid` lists them all.
Each problem reads ``<json path>: <what is wrong> [<rule>]``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ValidationError as FhirModelError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "cds_hooks_response.schema.json"

COVERAGE_INFORMATION_URL = (
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
)
CRD_TEMP_SYSTEM = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
CRD_VERSIONS = ("2.0", "2.1", "2.2")
CARD_TYPE_SYSTEMS = {
    "2.0": CRD_TEMP_SYSTEM,
    "2.1": CRD_TEMP_SYSTEM,
    "2.2": "http://terminology.hl7.org/CodeSystem/cdshooks-card-type",
}
# The CRD Response Types value set (CRD 2.2.1 CRDTempCodes.fsh, "Card types").
CRD_RESPONSE_TYPES = frozenset(
    {
        "coverage-info",
        "unsolicited-determ",
        "claim",
        "insurance",
        "limits",
        "network",
        "appropriate-use",
        "cost",
        "therapy-alternatives-opt",
        "therapy-alternatives-req",
        "clinical-reminder",
        "duplicate-therapy",
        "contraindication",
        "guideline",
        "off-guideline",
    }
)
CRD_HOOKS = frozenset(
    {
        "order-sign",
        "order-select",
        "order-dispatch",
        "appointment-book",
        "encounter-start",
        "encounter-discharge",
    }
)
# CRD hook-17/19: on these, coverage information SHALL NOT ask for clinical or admin documents.
SECONDARY_HOOKS = frozenset({"order-select", "encounter-start", "encounter-discharge"})
CLINICAL_OR_ADMIN_DOCUMENTATION = frozenset({"clinical", "admin", "both"})
# Resources the coverage-information extension may sit on (its FHIR contexts).
COVERAGE_INFORMATION_CONTEXTS = frozenset(
    {
        "Appointment",
        "CommunicationRequest",
        "DeviceRequest",
        "Encounter",
        "MedicationRequest",
        "NutritionOrder",
        "QuestionnaireResponse",
        "ServiceRequest",
        "VisionPrescription",
    }
)
# crd-ci-q7: a reason needs text unless it carries a code of the coverage-assertion reasons.
COVERAGE_ASSERTION_REASON_SYSTEMS = frozenset(
    {
        CRD_TEMP_SYSTEM,
        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    }
)
COVERAGE_ASSERTION_REASONS = frozenset(
    {
        "gold-card",
        "detail-code",
        "no-member-found",
        "no-active-coverage",
        "coverage-not-found",
        "auth-out-network",
        "technical",
    }
)

_PLAIN_PROPERTY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
_COVERAGE_REFERENCE = re.compile(r"(^|/)Coverage/[A-Za-z0-9\-.]{1,64}$")
_MAX_MESSAGE = 300


class ResponseInvalid(ValueError):
    """A response breaks one or more rules; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        listing = "\n".join(f"- {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the CDS Hooks response:\n{listing}")


def validate_cds_response(
    body: dict[str, Any], *, crd_version: str = "2.0", hook: str = "order-sign"
) -> None:
    """Check ``body`` against the schema and the rules it cannot express.

    Args:
        body: the decoded JSON response of a CDS service call.
        crd_version: the CRD dialect the call asked for (``davinci-crd.requestedVersion``):
            ``"2.0"`` (2.0.1, the default and what the CRD test kit checks), ``"2.1"`` or
            ``"2.2"``.
        hook: the hook the response answers; secondary hooks may not ask for documentation.

    Raises:
        ResponseInvalid: listing every problem found.
        ValueError: ``crd_version`` or ``hook`` is not one this validator knows.
    """
    if crd_version not in CRD_VERSIONS:
        known = ", ".join(CRD_VERSIONS)
        raise ValueError(f"crd_version must be one of {known}, not {crd_version!r}")
    if hook not in CRD_HOOKS:
        raise ValueError(f"hook must be one of {', '.join(sorted(CRD_HOOKS))}, not {hook!r}")
    problems = [*_empty_value_problems(body, ()), *_schema_problems(body)]
    if isinstance(body, dict):
        problems += _card_problems(body, crd_version)
        problems += _action_problems(body, crd_version, hook)
    if problems:
        raise ResponseInvalid(problems)


# --- paths and the schema -------------------------------------------------------------------


def json_path(parts: Sequence[str | int]) -> str:
    """``("cards", 0, "summary")`` -> ``$.cards[0].summary`` (jsonschema's notation)."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_PROPERTY.match(part):
            path += f".{part}"
        else:
            path += "['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return path


@cache
def response_schema() -> dict[str, Any]:
    """The response schema, loaded once."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


@cache
def _schema_validator() -> Draft202012Validator:
    schema = response_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _is_empty(value: Any) -> bool:
    return value is None or value in ({}, []) or (isinstance(value, str) and not value.strip())


def _empty_value_problems(node: Any, parts: tuple[str | int, ...]) -> Iterator[str]:
    """CDS Hooks: OPTIONAL fields are omitted, never null or empty; only ``cards`` may be []."""
    where = json_path(parts)
    if node is None:
        yield f"{where}: null is not allowed; omit the field instead [no-empty]"
    elif isinstance(node, str) and not node.strip():
        yield f"{where}: empty or blank string is not allowed; omit the field instead [no-empty]"
    elif isinstance(node, list):
        if not node and parts != ("cards",):
            yield f"{where}: empty array is not allowed; omit the field instead [no-empty]"
        for index, item in enumerate(node):
            yield from _empty_value_problems(item, (*parts, index))
    elif isinstance(node, dict):
        if not node:
            yield f"{where}: empty object is not allowed; omit the field instead [no-empty]"
        for key, value in node.items():
            yield from _empty_value_problems(value, (*parts, key))


def _schema_message(error: SchemaError) -> str:
    if error.validator == "not" and isinstance(error.validator_value, dict):
        forbidden = error.validator_value.get("required", [])
        message = f"{', '.join(map(repr, forbidden))} is not allowed here"
    else:
        message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    comment = error.schema.get("$comment") if isinstance(error.schema, dict) else None
    return f"{message} ({comment})" if comment else message


def _schema_problems(body: Any) -> list[str]:
    errors = list(_schema_validator().iter_errors(body))
    pattern_failures = {
        json_path(list(error.absolute_path)) for error in errors if error.validator == "pattern"
    }
    problems = []
    for error in errors:
        where = json_path(list(error.absolute_path))
        # The recursive walk already reports null and empty values, once, wherever they are.
        if error.validator != "required" and _is_empty(error.instance):
            continue
        # A uuid that fails its pattern fails its format too: say it once.
        if error.validator == "format" and where in pattern_failures:
            continue
        problems.append(f"{where}: {_schema_message(error)} [schema]")
    return sorted(problems)


# --- cards -----------------------------------------------------------------------------------


def _dicts(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield index, item


def _card_problems(body: Mapping[str, Any], crd_version: str) -> list[str]:
    problems: list[str] = []
    first_seen: dict[str, str] = {}

    def note_uuid(value: Any, where: str) -> None:
        if not isinstance(value, str):
            return
        if value in first_seen:
            problems.append(
                f"{where}: uuid {value} is already used at {first_seen[value]}; card and "
                "suggestion uuids must be unique in a response [unique-uuid]"
            )
        else:
            first_seen[value] = where

    for card_index, card in _dicts(body.get("cards")):
        card_parts: tuple[str | int, ...] = ("cards", card_index)
        note_uuid(card.get("uuid"), json_path((*card_parts, "uuid")))
        source = card.get("source")
        topic = source.get("topic") if isinstance(source, dict) else None
        if isinstance(topic, dict):
            problems += _topic_problems(topic, crd_version, (*card_parts, "source", "topic"))
        suggestions = list(_dicts(card.get("suggestions")))
        for suggestion_index, suggestion in suggestions:
            where = json_path((*card_parts, "suggestions", suggestion_index, "uuid"))
            note_uuid(suggestion.get("uuid"), where)
        recommended = [s for _, s in suggestions if s.get("isRecommended") is True]
        if card.get("selectionBehavior") == "at-most-one" and len(recommended) > 1:
            problems.append(
                f"{json_path(card_parts)}: {len(recommended)} suggestions are isRecommended but "
                "selectionBehavior is at-most-one [cds-resp-1]"
            )
    return problems


def _topic_problems(
    topic: Mapping[str, Any], crd_version: str, parts: tuple[str | int, ...]
) -> list[str]:
    problems = []
    expected_system = CARD_TYPE_SYSTEMS[crd_version]
    if topic.get("system") != expected_system:
        problems.append(
            f"{json_path((*parts, 'system'))}: CRD {crd_version} card topics use {expected_system},"
            f" not {topic.get('system')!r} [crd-resp-5]"
        )
    if topic.get("code") not in CRD_RESPONSE_TYPES:
        problems.append(
            f"{json_path((*parts, 'code'))}: {topic.get('code')!r} is not a code of the CRD "
            "Response Types value set [crd-resp-5]"
        )
    return problems


# --- actions and their FHIR resources --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Action:
    parts: tuple[str | int, ...]
    action: dict[str, Any]
    is_system_action: bool


def _actions(body: Mapping[str, Any]) -> Iterator[_Action]:
    for card_index, card in _dicts(body.get("cards")):
        for suggestion_index, suggestion in _dicts(card.get("suggestions")):
            for action_index, action in _dicts(suggestion.get("actions")):
                parts = (
                    "cards",
                    card_index,
                    "suggestions",
                    suggestion_index,
                    "actions",
                    action_index,
                )
                yield _Action(parts, action, is_system_action=False)
    for action_index, action in _dicts(body.get("systemActions")):
        yield _Action(("systemActions", action_index), action, is_system_action=True)


def _fhir_problems(resource: Mapping[str, Any], parts: tuple[str | int, ...]) -> list[str]:
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return []  # the schema reports the missing resourceType
    where = json_path(parts)
    try:
        get_fhir_model_class(resource_type).model_validate(resource)
    except FhirModelError as exc:
        return [
            f"{where}.{'.'.join(str(step) for step in error['loc'])}: "
            f"not valid FHIR R4B {resource_type}: {error['msg']} [fhir]"
            for error in exc.errors()
        ]
    except ValueError as exc:  # get_fhir_model_class: not a FHIR resource type
        return [f"{where}: not a FHIR R4B resource: {exc} [fhir]"]
    return []


def _coverage_information_locations(
    node: Any, parts: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every ``ext-coverage-information`` extension anywhere inside ``node``."""
    if isinstance(node, dict):
        if node.get("url") == COVERAGE_INFORMATION_URL:
            yield parts, node
        for key, value in node.items():
            yield from _coverage_information_locations(value, (*parts, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _coverage_information_locations(item, (*parts, index))


@dataclass(frozen=True, slots=True)
class _Assertion:
    where: str
    coverage: str
    assertion_id: str


def _action_problems(body: Mapping[str, Any], crd_version: str, hook: str) -> list[str]:
    problems: list[str] = []
    assertions: list[_Assertion] = []
    updated_orders: dict[tuple[str, str], str] = {}
    for item in _actions(body):
        resource = item.action.get("resource")
        if not isinstance(resource, dict):
            continue
        resource_parts = (*item.parts, "resource")
        problems += _fhir_problems(resource, resource_parts)
        found = list(_coverage_information_locations(resource, resource_parts))
        if not found:
            continue
        where = json_path(item.parts)
        if not item.is_system_action:
            problems.append(
                f"{where}: coverage information is returned as a system action, never inside a "
                "card [crd-resp-25]"
            )
        elif item.action.get("type") != "update":
            problems.append(
                f"{where}: a coverage-information system action has type update, not "
                f"{item.action.get('type')!r} [crd-resp-25]"
            )
        resource_type = resource.get("resourceType")
        if resource_type not in COVERAGE_INFORMATION_CONTEXTS:
            problems.append(
                f"{json_path(resource_parts)}: coverage information cannot be put on "
                f"{resource_type!r}, only on {', '.join(sorted(COVERAGE_INFORMATION_CONTEXTS))} "
                "[coverage-information]"
            )
        target = (str(resource_type), str(resource.get("id")))
        if item.is_system_action and target in updated_orders:
            problems.append(
                f"{where}: {target[0]}/{target[1]} already gets coverage information from "
                f"{updated_orders[target]}; one system action per order [crd-resp-29]"
            )
        elif item.is_system_action:
            updated_orders[target] = where
        for parts, extension in found:
            if parts[:-1] != (*resource_parts, "extension"):
                problems.append(
                    f"{json_path(parts)}: coverage information is an extension of the resource "
                    "itself, not of one of its elements [coverage-information]"
                )
            extension_problems, assertion = _coverage_information_problems(
                extension, parts, crd_version, hook
            )
            problems += extension_problems
            if assertion is not None:
                assertions.append(assertion)
    problems += _assertion_id_problems(assertions)
    return problems


def _assertion_id_problems(assertions: Sequence[_Assertion]) -> list[str]:
    """resp-32/33 as the CRD test kit checks them: one id per Coverage, distinct across them."""
    problems = []
    ids_by_coverage: dict[str, dict[str, str]] = defaultdict(dict)
    coverages_by_id: dict[str, dict[str, str]] = defaultdict(dict)
    for assertion in assertions:
        ids_by_coverage[assertion.coverage].setdefault(assertion.assertion_id, assertion.where)
        coverages_by_id[assertion.assertion_id].setdefault(assertion.coverage, assertion.where)
    for coverage, ids in ids_by_coverage.items():
        if len(ids) > 1:
            listing = "; ".join(f"{i!r} at {where}" for i, where in ids.items())
            problems.append(
                f"$: coverage {coverage} has {len(ids)} coverage-assertion-ids ({listing}); all "
                "assertions for one Coverage in a response share one id [crd-resp-33]"
            )
    for assertion_id, coverages in coverages_by_id.items():
        if len(coverages) > 1:
            problems.append(
                f"$: coverage-assertion-id {assertion_id!r} is used for "
                f"{', '.join(sorted(coverages))}; different Coverages need different ids "
                "[crd-resp-32]"
            )
    return problems


# --- the coverage-information extension ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubExtension:
    """One sub-extension of a complex extension: cardinality, value[x] types and codes.

    ``value_types`` empty means the sub-extension is itself complex (``extension`` only).
    """

    minimum: int
    maximum: int | None
    value_types: frozenset[str]
    codes: frozenset[str] | None = None


def _one(value_type: str, codes: set[str] | None = None) -> SubExtension:
    return SubExtension(1, 1, frozenset({value_type}), frozenset(codes) if codes else None)


def _optional(value_type: str, codes: set[str] | None = None) -> SubExtension:
    return SubExtension(0, 1, frozenset({value_type}), frozenset(codes) if codes else None)


def _many(value_type: str, codes: set[str] | None = None) -> SubExtension:
    return SubExtension(0, None, frozenset({value_type}), frozenset(codes) if codes else None)


@cache
def coverage_information_rules(crd_version: str) -> dict[str, SubExtension]:
    """The sub-extensions of ``ext-coverage-information`` in one CRD version.

    2.0 is CRD 2.0.1 (``CoverageInformation.fsh`` at that tag), 2.1 adds repeating
    ``doc-needed`` with ``patient`` and ``expiry-date`` and drops ``response``, 2.2 adds
    ``indeterminate``, info-needed ``detail-code`` and ContactDetail contacts.
    """
    indeterminate = {"indeterminate"} if crd_version == "2.2" else set()
    pa_needed = {"no-auth", "auth-needed", "satisfied", "performpa", "conditional"}
    info_needed = {"performer", "location", "timeframe", "contract-window", "OTH"}
    doc_purpose = {"withpa", "withclaim", "withorder", "retain-doc", "OTH"}
    rules = {
        "coverage": _one("valueReference"),
        "covered": _one("valueCode", {"covered", "not-covered", "conditional", *indeterminate}),
        "pa-needed": _optional("valueCode", pa_needed | indeterminate),
        "doc-purpose": _many("valueCode", doc_purpose),
        "billingCode": _many("valueCoding"),
        "reason": _many("valueCodeableConcept"),
        "detail": SubExtension(0, None, frozenset()),
        "dependency": _many("valueReference"),
        "questionnaire": _many("valueCanonical"),
        "date": _one("valueDate"),
        "coverage-assertion-id": _one("valueString"),
        "satisfied-pa-id": _optional("valueString"),
    }
    if crd_version == "2.0":
        rules["doc-needed"] = _optional("valueCode", {"clinical", "admin", "both", "conditional"})
        rules["info-needed"] = _many("valueCode", info_needed)
        rules["response"] = _many("valueReference")
        rules["contact"] = _many("valueContactPoint")
    else:
        doc_needed = {"clinical", "admin", "patient", "conditional", *indeterminate}
        rules["doc-needed"] = _many("valueCode", doc_needed)
        detail_code = {"detail-code"} if crd_version == "2.2" else set()
        rules["info-needed"] = _many("valueCode", info_needed | detail_code)
        rules["expiry-date"] = _optional("valueDate")
        contact_type = "valueContactDetail" if crd_version == "2.2" else "valueContactPoint"
        rules["contact"] = _many(contact_type)
    return rules


@cache
def coverage_detail_rules(crd_version: str) -> dict[str, SubExtension]:
    """The sub-extensions of a coverage-information ``detail``.

    ``category`` exists (and is required) from 2.2 on. CRD 2.0.1 allows the value as boolean,
    string, SimpleQuantity or Period; ``url`` came later.
    """
    value_types = {"valueBoolean", "valueString", "valueQuantity", "valuePeriod"}
    if crd_version != "2.0":
        value_types.add("valueUrl")
    rules = {
        "code": _one("valueCodeableConcept"),
        "value": SubExtension(1, 1, frozenset(value_types)),
        "qualification": _optional("valueString"),
    }
    if crd_version == "2.2":
        rules["category"] = _one("valueCode", {"cat-limitation", "cat-decisional", "cat-other"})
    return rules


def _sub_extension_problems(
    extension: Mapping[str, Any],
    parts: tuple[str | int, ...],
    rules: Mapping[str, SubExtension],
    crd_version: str,
) -> tuple[list[str], dict[str, list[tuple[int, dict[str, Any]]]]]:
    """Check the ``extension`` list of a complex extension against ``rules``.

    Returns the problems and the well-formed sub-extensions (with their index) by url.
    """
    problems = []
    by_url: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    unexpected = sorted(set(extension) - {"url", "extension"})
    if unexpected:
        problems.append(
            f"{json_path(parts)}: a complex extension has only url and extension, not "
            f"{', '.join(unexpected)} [coverage-information]"
        )
    children = extension.get("extension")
    if not isinstance(children, list):
        problems.append(f"{json_path(parts)}: sub-extensions are missing [coverage-information]")
        children = []
    for index, child in enumerate(children):
        where = json_path((*parts, "extension", index))
        url = child.get("url") if isinstance(child, dict) else None
        if not isinstance(url, str) or url not in rules:
            problems.append(
                f"{where}: {url!r} is not a sub-extension of this extension in CRD {crd_version} "
                f"(allowed: {', '.join(sorted(rules))}) [coverage-information]"
            )
            continue
        rule = rules[url]
        value_keys = sorted(k for k in child if k.startswith("value"))
        other_keys = sorted(set(child) - {"url", *value_keys})
        if rule.value_types:
            if other_keys:
                problems.append(
                    f"{where}: {url} has a value only, not {', '.join(other_keys)} "
                    "[coverage-information]"
                )
            if len(value_keys) != 1 or value_keys[0] not in rule.value_types:
                problems.append(
                    f"{where}: {url} needs exactly one of {', '.join(sorted(rule.value_types))}, "
                    f"found {', '.join(value_keys) or 'none'} (CRD {crd_version}) "
                    "[coverage-information]"
                )
                continue
            value = child[value_keys[0]]
            if rule.codes is not None and value not in rule.codes:
                problems.append(
                    f"{where}: {value!r} is not a {url} code in CRD {crd_version} "
                    f"({' | '.join(sorted(rule.codes))}) [coverage-information]"
                )
                continue
        elif value_keys or other_keys != ["extension"]:
            problems.append(
                f"{where}: {url} is complex: url and extension only [coverage-information]"
            )
            continue
        by_url[url].append((index, child))
    for url, rule in rules.items():
        count = sum(1 for child in children if isinstance(child, dict) and child.get("url") == url)
        if count < rule.minimum or (rule.maximum is not None and count > rule.maximum):
            allowed = f"{rule.minimum}..{'*' if rule.maximum is None else rule.maximum}"
            problems.append(
                f"{json_path(parts)}: {url} appears {count} time(s); CRD {crd_version} allows "
                f"{allowed} [coverage-information]"
            )
    return problems, by_url


def _coverage_information_problems(
    extension: Mapping[str, Any], parts: tuple[str | int, ...], crd_version: str, hook: str
) -> tuple[list[str], _Assertion | None]:
    problems, found = _sub_extension_problems(
        extension, parts, coverage_information_rules(crd_version), crd_version
    )
    for index, child in found.get("detail", []):
        detail_problems, _ = _sub_extension_problems(
            child, (*parts, "extension", index), coverage_detail_rules(crd_version), crd_version
        )
        problems += detail_problems
    children = extension.get("extension")
    present = {c.get("url") for _, c in _dicts(children)}
    problems += _invariant_problems(found, present, json_path(parts), crd_version, hook)
    coverage = [
        c["valueReference"].get("reference")
        for _, c in found.get("coverage", [])
        if isinstance(c["valueReference"], dict)
    ]
    for reference in coverage:
        if not isinstance(reference, str) or not _COVERAGE_REFERENCE.search(reference):
            problems.append(
                f"{json_path(parts)}: coverage must reference a Coverage, not "
                f"{reference!r} [coverage-information]"
            )
    ids = [c["valueString"] for _, c in found.get("coverage-assertion-id", [])]
    assertion = None
    if len(coverage) == 1 and len(ids) == 1 and isinstance(coverage[0], str):
        assertion = _Assertion(json_path(parts), coverage[0], str(ids[0]))
    return problems, assertion


def _invariant_problems(
    found: Mapping[str, list[tuple[int, dict[str, Any]]]],
    present_urls: set[Any],
    where: str,
    crd_version: str,
    hook: str,
) -> list[str]:
    """crd-ci-q1..q9 and hook-19; ``found`` holds the well-formed sub-extensions by url."""

    def codes(url: str) -> list[Any]:
        return [child["valueCode"] for _, child in found.get(url, [])]

    def present(url: str) -> bool:
        return url in present_urls

    problems = []
    covered, pa_needed, doc_needed = codes("covered"), codes("pa-needed"), codes("doc-needed")
    decisions = covered + pa_needed + doc_needed
    questionnaires = ("questionnaire", "response") if crd_version == "2.0" else ("questionnaire",)
    if any(present(url) for url in questionnaires) and not present("doc-needed"):
        problems.append(f"{where}: a questionnaire is only given with doc-needed [crd-ci-q1]")
    if "not-covered" in covered and pa_needed:
        problems.append(f"{where}: not-covered carries no pa-needed (CRD 2.2 q2) [crd-ci-q2]")
    if covered and "not-covered" not in covered and not pa_needed:
        problems.append(
            f"{where}: covered is {covered[0]!r}, so pa-needed is required (CRD 2.0.1 q2) "
            "[crd-ci-q2]"
        )
    if "conditional" in decisions and not present("info-needed"):
        problems.append(
            f"{where}: a conditional covered, pa-needed or doc-needed needs info-needed [crd-ci-q3]"
        )
    if crd_version == "2.0" and present("info-needed") and "conditional" not in decisions:
        problems.append(
            f"{where}: info-needed is only given when covered, pa-needed or doc-needed is "
            "conditional (CRD 2.0.1 q3) [crd-ci-q3]"
        )
    if {"satisfied", "no-auth"} & set(pa_needed) and "withpa" in codes("doc-purpose"):
        problems.append(
            f"{where}: pa-needed {pa_needed[0]!r} cannot ask for documentation withpa [crd-ci-q4]"
        )
    if ("satisfied" in pa_needed) != present("satisfied-pa-id"):
        problems.append(
            f"{where}: satisfied-pa-id is given if and only if pa-needed is satisfied [crd-ci-q5]"
        )
    if "OTH" in codes("info-needed") and not present("reason"):
        problems.append(f"{where}: info-needed OTH needs a reason [crd-ci-q6]")
    for _, child in found.get("reason", []):
        problems += _reason_problems(child["valueCodeableConcept"], where)
    if [p for p in codes("doc-purpose") if p != "conditional"] and not present("reason"):
        problems.append(f"{where}: doc-purpose needs a reason [crd-ci-q8]")
    if "indeterminate" in decisions and not present("reason"):
        problems.append(f"{where}: an indeterminate answer needs a reason [crd-ci-q9]")
    if hook in SECONDARY_HOOKS and CLINICAL_OR_ADMIN_DOCUMENTATION & set(doc_needed):
        problems.append(
            f"{where}: {hook} is a secondary hook; its coverage information asks for no clinical "
            f"or administrative documentation (doc-needed {', '.join(doc_needed)}) [crd-hook-19]"
        )
    return problems


def _reason_problems(reason: Any, where: str) -> list[str]:
    """crd-ci-q7: a reason without text carries a code of the coverage-assertion reasons."""
    if not isinstance(reason, dict) or reason.get("text"):
        return []
    coding = reason.get("coding")
    codings = coding if isinstance(coding, list) else []
    known = [
        c
        for c in codings
        if isinstance(c, dict)
        and c.get("system") in COVERAGE_ASSERTION_REASON_SYSTEMS
        and c.get("code") in COVERAGE_ASSERTION_REASONS
    ]
    if known:
        return []
    return [f"{where}: a reason without a coverage-assertion reason code needs text [crd-ci-q7]"]
