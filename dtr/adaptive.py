"""The adaptive walk: from the answers so far, the next questions that could still change
the order's outcome, and the QuestionnaireResponse ``$next-question`` answers with.

What the walk knows besides the answers is a ``Knowledge``: what the audit trail
recorded of the decision the form belongs to (its rules, criterion truths, the order's
facts), for a DTR client that is not the EHR; or nothing (a form asked for by its
canonical alone). Each step decides again (``coverage_policy.engine.redecide``) and
asks, for each deciding rule left unknown, the unanswered items of the criteria still
open: every part of an ``all``, and of the alternatives of an ``any`` only the one with
fewest questions (if it settles the rule, the others never need asking). A criterion not
checked (its data could not be retrieved) is not asked, as on the card. When nothing is
left to ask the response is ``completed``.

Pure: JSON in, JSON out, problems raised as ``FormInputError`` naming where.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from coverage_policy.engine import logic_truth, redecide
from coverage_policy.model import (
    Decision,
    DocumentationItem,
    Evidence,
    FactValue,
    Needs,
    Outcome,
    Policy,
    RecordedCriterion,
    RuleKind,
    Truth,
)
from dtr.forms import ADAPTIVE_EXTENSION, question
from fhir_mappings.documentation import stated_facts
from hooks.crd_dialect import TEMP_SYSTEM
from hooks.questionnaire import option_system, terminology_base

QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
INTENDED_USE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/intendedUse"
CONTAINED_FORM_ID = "form"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def assertion_extension_url(policy: Policy) -> str:
    """Our extension carrying the CRD coverage-assertion-id a response belongs to."""
    return f"{terminology_base(policy)}/StructureDefinition/coverage-assertion-id"


@dataclass(frozen=True, slots=True)
class FormProblem:
    diagnostics: str
    expression: str


class FormInputError(ValueError):
    """A QuestionnaireResponse or Parameters body the payer cannot work with."""

    def __init__(self, problems: list[FormProblem]) -> None:
        super().__init__("; ".join(p.diagnostics for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the walk knows of the order besides the answers."""

    rule_ids: tuple[str, ...]  # indication first, then its requirements
    known: Mapping[str, RecordedCriterion]  # what the decision recorded, by criterion id
    as_of: date
    orders: tuple[str, ...] = ()
    assertion_id: str | None = None
    crd_version: str | None = None
    coverage: str | None = None
    # The order's facts the rules' scopes read; empty when not known (no context).
    order_facts: Mapping[str, Any] = field(default_factory=dict)
    # Whether the decision is a CRD one: only a form completed for a CRD decision may
    # carry coverage-information (DTR).
    from_crd: bool = True


def knowledge_of(
    decision: Decision,
    *,
    orders: tuple[str, ...],
    order_facts: Mapping[str, Any],
    assertion_id: str | None,
    from_crd: bool,
) -> Knowledge:
    """What a walk knows of a decision made here and now (on the resources a client
    sent, or on the record our own app read)."""
    known = {
        result.criterion.id: RecordedCriterion(result.truth, result.checked, result.if_answered)
        for rule in decision.rule_results
        for result in rule.results
    }
    return Knowledge(
        rule_ids=(decision.rule_id, *(r.rule.id for r in decision.requirements)),
        known=known,
        as_of=decision.as_of,
        orders=orders,
        assertion_id=assertion_id,
        order_facts=order_facts,
        from_crd=from_crd,
    )


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the walk: the decision on the answers so far and what to ask next.

    ``asserts`` is False when the walk ends without a decision the payer can assert from
    the form: an answer moved the order to another rule (the pump kind, say), or a
    criterion is still open with all its items answered (the record decides the rest).
    Signing the order again decides it then."""

    decision: Decision
    asked: tuple[DocumentationItem, ...] = field(default=())
    asserts: bool = True

    @property
    def finished(self) -> bool:
        return not self.asked


# -- reading answers --------------------------------------------------------------------


def listed(value: Any, where: str) -> list[Any]:
    """A repeating element's entries ([] when absent); anything but a JSON array is a
    ``FormInputError`` naming ``where``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormInputError([FormProblem(f"'{where.rpartition('.')[2]}' must be a list", where)])
    return value


def _walk_items(items: Any, path: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    if items is None:
        return
    if not isinstance(items, list):
        raise FormInputError([FormProblem("'item' must be a list", path)])
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            raise FormInputError([FormProblem("an item must be an object", where)])
        yield item, where
        yield from _walk_items(item.get("item"), f"{where}.item")
        for a_index, answer in enumerate(listed(item.get("answer"), f"{where}.answer")):
            if isinstance(answer, Mapping):
                yield from _walk_items(answer.get("item"), f"{where}.answer[{a_index}].item")


def _answer_value(item: DocumentationItem, policy: Policy, answer: Any, where: str) -> Any:
    if not isinstance(answer, Mapping):
        raise FormInputError([FormProblem("an answer must be an object", where)])
    if item.answer_type == "boolean":
        value = answer.get("valueBoolean")
        if isinstance(value, bool):
            return value
        wanted = "a valueBoolean"
    elif item.answer_type == "choice":
        coding = answer.get("valueCoding")
        codes = {code for code, _ in item.options}
        if isinstance(coding, Mapping) and coding.get("code") in codes:
            system = coding.get("system")
            if system in (None, option_system(policy, item)):
                return coding["code"]
        wanted = "a valueCoding from " + ", ".join(sorted(codes))
    elif item.answer_type == "decimal":
        quantity = answer.get("valueQuantity")
        if isinstance(quantity, Mapping):
            amount = item.decimal_answer(
                quantity.get("value"), quantity.get("code") or quantity.get("unit")
            )
        else:
            amount = item.decimal_answer(answer.get("valueDecimal", answer.get("valueInteger")))
        if amount is not None:
            return amount
        wanted = f"a valueDecimal in {item.unit}" if item.unit else "a valueDecimal"
    else:
        raw = answer.get("valueDate")
        if isinstance(raw, str) and _DATE.fullmatch(raw):
            try:
                return date.fromisoformat(raw)
            except ValueError:
                pass
        wanted = "a valueDate (YYYY-MM-DD)"
    raise FormInputError([FormProblem(f"'{item.id}' needs {wanted}", where)])


def read_answers(
    policy: Policy, response: Mapping[str, Any], asked: frozenset[str] | None = None
) -> dict[str, FactValue]:
    """``doc.<item>`` facts from a QuestionnaireResponse's answers (every item present,
    None where unanswered). ``asked`` limits the linkIds accepted to the form's questions."""
    answers: dict[str, FactValue] = {
        f"doc.{item_id}": FactValue(None) for item_id in policy.documentation
    }
    problems: list[FormProblem] = []
    reference = (
        f"QuestionnaireResponse/{response['id']}"
        if isinstance(response.get("id"), str)
        else "QuestionnaireResponse"
    )
    for item, where in _walk_items(response.get("item"), "QuestionnaireResponse.item"):
        link_id = item.get("linkId")
        spec = policy.documentation.get(link_id) if isinstance(link_id, str) else None
        if spec is None or (asked is not None and link_id not in asked):
            problems.append(
                FormProblem(f"'{link_id}' is not a question this form asked", f"{where}.linkId")
            )
            continue
        given = item.get("answer") or []
        if not isinstance(given, list) or len(given) > 1:
            problems.append(FormProblem(f"'{link_id}' takes one answer", f"{where}.answer"))
            continue
        if not given:
            continue
        try:
            value = _answer_value(spec, policy, given[0], f"{where}.answer[0]")
        except FormInputError as error:
            problems += error.problems
            continue
        shown = value.isoformat() if isinstance(value, date) else value
        answers[f"doc.{spec.id}"] = FactValue(
            value, (Evidence(reference, f"answered '{spec.id}': {shown}"),)
        )
    if problems:
        raise FormInputError(problems)
    return answers


# -- the walk ---------------------------------------------------------------------------


def _open_items(node: Needs | str, policy: Policy, answered: set[str]) -> list[str]:
    if isinstance(node, str):
        return [d for d in policy.criteria[node].documentation if d not in answered]
    if node.mode == "all":
        found: list[str] = []
        for child in node.items:
            found += [d for d in _open_items(child, policy, answered) if d not in found]
        return found
    # Of the alternatives, the one with fewest questions (the first of those).
    options = [found for child in node.items if (found := _open_items(child, policy, answered))]
    return min(options, key=len) if options else []


def next_items(
    policy: Policy, decision: Decision, answered: set[str]
) -> tuple[DocumentationItem, ...]:
    """The unanswered questions that could still change ``decision``'s outcome."""
    ids: list[str] = []
    for result in decision.deciding_results:
        if result.missing is not None:
            ids += [d for d in _open_items(result.missing, policy, answered) if d not in ids]
    return tuple(policy.documentation[d] for d in ids)


def _rules_now(
    policy: Policy, knowledge: Knowledge, facts: Mapping[str, FactValue]
) -> tuple[str, ...]:
    """The decision's indication and the requirement rules that apply to the order now:
    an answer (where the pump is used, say) can make one apply or not. Without the
    order's facts, the requirements the decision had."""
    if not knowledge.order_facts:
        return knowledge.rule_ids
    requirements = [
        rule.id
        for rule in policy.rules
        if rule.kind is RuleKind.REQUIREMENT
        and rule.effective.contains(knowledge.as_of)
        and logic_truth(policy, rule.applies_when, facts, knowledge.as_of) is Truth.MET
    ]
    return (knowledge.rule_ids[0], *requirements)


def step(policy: Policy, knowledge: Knowledge, answers: Mapping[str, FactValue]) -> Step | None:
    """Decide again on the answers and pick the next questions; None when the knowledge
    names no indication rule of this policy."""
    facts = {name: FactValue(value) for name, value in knowledge.order_facts.items()}
    facts.update(answers)
    for name, fact in stated_facts(answers, knowledge.as_of).items():
        if name not in knowledge.order_facts:  # the order itself outweighs an answer
            facts[name] = fact
    decision = redecide(
        policy, _rules_now(policy, knowledge, facts), knowledge.known, facts, knowledge.as_of
    )
    if decision is None:
        return None
    if logic_truth(policy, decision.indication.rule.applies_when, facts, knowledge.as_of) is (
        Truth.UNMET
    ):
        return Step(decision, asserts=False)  # an answer moved the order to another rule
    if decision.outcome is not Outcome.CONDITIONAL:
        return Step(decision)
    answered = {key[4:] for key, fact in answers.items() if fact.value is not None}
    asked = next_items(policy, decision, answered)
    open_ids = {
        c for r in decision.deciding_results if r.missing for c in r.missing.criterion_ids()
    }
    undetermined = [
        c
        for c in open_ids
        if policy.criteria[c].documentation
        and all(d in answered for d in policy.criteria[c].documentation)
    ]
    return Step(decision, asked, asserts=bool(asked) or not undetermined)


# -- the QuestionnaireResponse ------------------------------------------------------------


# The repeating elements of the contained form the payer reads.
_FORM_LISTS = ("derivedFrom", "item", "extension")


def contained_form(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The adaptive Questionnaire a response's ``questionnaire`` (``#id``) points at.
    Raises ``FormInputError`` if ``contained``, or the form's ``derivedFrom``, ``item``
    or ``extension``, is not a list, or a question of the form has no string ``linkId``."""
    contained = listed(response.get("contained"), "QuestionnaireResponse.contained")
    target = response.get("questionnaire")
    if not isinstance(target, str) or not target.startswith("#"):
        return None
    for index, resource in enumerate(contained):
        if (
            isinstance(resource, Mapping)
            and resource.get("resourceType") == "Questionnaire"
            and resource.get("id") == target[1:]
        ):
            where = f"QuestionnaireResponse.contained[{index}]"
            for name in _FORM_LISTS:
                listed(resource.get(name), f"{where}.{name}")
            for position, item in enumerate(resource.get("item") or []):
                if not isinstance(item, Mapping) or not isinstance(item.get("linkId"), str):
                    raise FormInputError(
                        [FormProblem("a question needs a linkId", f"{where}.item[{position}]")]
                    )
            return resource
    return None


def extension_value(resource: Mapping[str, Any], url: str, kind: str) -> list[Any]:
    """The ``kind`` values of ``resource``'s extensions of ``url`` (entries that are not
    objects are skipped); an ``extension`` that is not a list is a ``FormInputError``."""
    where = f"{resource.get('resourceType') or 'resource'}.extension"
    return [
        e.get(kind)
        for e in listed(resource.get("extension"), where)
        if isinstance(e, Mapping) and e.get("url") == url and e.get(kind) is not None
    ]


def check_response_shape(response: Mapping[str, Any]) -> None:
    """Raise ``FormInputError`` where a QuestionnaireResponse's repeating elements the
    payer reads (``extension``, ``contained``, the contained form's, ``item``) are not lists."""
    listed(response.get("extension"), "QuestionnaireResponse.extension")
    contained_form(response)
    for _ in _walk_items(response.get("item"), "QuestionnaireResponse.item"):
        pass


def initial_response(
    policy: Policy,
    form: Mapping[str, Any],
    *,
    patient: str | None,
    coverage: str | None,
    orders: tuple[str, ...],
    assertion_id: str | None,
    authored: str,
) -> dict[str, Any]:
    """The package's draft QuestionnaireResponse: what ``$next-question`` needs to go on
    (DTR oper-18): the adaptive form contained with no questions yet, the orders and the
    Coverage (when known) as ``qr-context``, ``intendedUse``, and the coverage-assertion-id."""
    canonical = f"{form['url']}|{form['version']}"
    contained = {
        "resourceType": "Questionnaire",
        "id": CONTAINED_FORM_ID,
        "text": form["text"],
        "extension": [e for e in form["extension"] if e.get("url") == ADAPTIVE_EXTENSION],
        "url": form["url"],
        "version": form["version"],
        "derivedFrom": [canonical],
        "title": form["title"],
        "status": "active",
        "subjectType": ["Patient"],
    }
    extensions: list[dict[str, Any]] = [
        {"url": QR_CONTEXT, "valueReference": {"reference": reference}}
        for reference in (*orders, coverage)
        if reference is not None
    ]
    extensions.append(
        {
            "url": INTENDED_USE,
            "valueCodeableConcept": {"coding": [{"system": TEMP_SYSTEM, "code": "withclaim"}]},
        }
    )
    if assertion_id:
        extensions.append({"url": assertion_extension_url(policy), "valueString": assertion_id})
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "contained": [contained],
        "extension": extensions,
        "questionnaire": f"#{CONTAINED_FORM_ID}",
        "status": "in-progress",
        "authored": authored,
    }
    if patient:
        response["subject"] = {"reference": patient}
    return response


def advance(
    policy: Policy,
    response: Mapping[str, Any],
    done: Step,
    coverage_information: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``response`` with the next questions added to its contained form, ``completed``
    when none is left, and then the new coverage-information at its root (if any)."""
    advanced = copy.deepcopy(dict(response))
    form = contained_form(advanced)  # the copy's own contained form, edited in place
    if not isinstance(form, dict):
        raise FormInputError(
            [
                FormProblem(
                    "the response has no contained adaptive Questionnaire",
                    "QuestionnaireResponse.questionnaire",
                )
            ]
        )
    present = {item.get("linkId") for item in form.get("item") or [] if isinstance(item, Mapping)}
    new = [question(policy, item) for item in done.asked if item.id not in present]
    if new:
        form["item"] = [*(form.get("item") or []), *new]
    advanced["status"] = "in-progress" if done.asked else "completed"
    if coverage_information is not None:
        kept = [
            e
            for e in advanced.get("extension") or []
            if not (isinstance(e, Mapping) and e.get("url") == coverage_information["url"])
        ]
        advanced["extension"] = [*kept, dict(coverage_information)]
    return advanced
