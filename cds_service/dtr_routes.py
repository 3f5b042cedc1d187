"""The payer side of Da Vinci DTR 2.0.1 under ``/fhir``.

- ``POST /fhir/Questionnaire/$questionnaire-package``: the adaptive form of each order's
  rule, its answer ValueSets and a draft QuestionnaireResponse, per order decided.
- ``POST /fhir/Questionnaire/$next-question`` (also ``/fhir/$next-question``): the
  response so far → the next questions that could still change the outcome, or the
  completed response with a new coverage-information at its root.
- ``GET /fhir/ValueSet/$expand?url=``: the answer ValueSets the forms bind.
- ``GET /fhir/metadata``: the CapabilityStatement of these operations.
- ``POST /fhir/Questionnaire/$log-questionnaire-errors``: what a client reports, logged.

What a form knows of the order besides its answers comes from the audit trail: the
decision that the coverage-assertion-id (``context``) names, and only together with an
order that decision was about, so nobody reads another decision's criteria by guessing
an id. Without a context, a package asked for by orders is decided on them and the
resources sent as ``referenced``, recorded under an id of its own; one asked for by a
canonical alone knows nothing. Neither yields coverage-information (DTR: a payer asserts
coverage from a form only where CRD ran).
The operations need a SMART Backend Services token with ``system/Questionnaire.rs``
(``system/ValueSet.rs`` for ``$expand``; ``cds_service.backend_auth``); reading the
forms themselves (``Questionnaire/<id>``, ``metadata``) needs none, as they hold no PHI
and the documentation card links to them. Each answered call is audited like a service call
(``service_id`` ``dtr``, ``hook`` the operation, the DTR client as ``client_iss``); a
response completed with coverage-information records its decision under the new
coverage-assertion-id, with the orders, so ``audit show`` finds it and a later form can
name it as its context. Nothing of the answers themselves is kept (no PHI).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, cast

from flask import Blueprint, Response, current_app, request

from cds_service.audit import (
    AuditRecord,
    CallTimings,
    DecisionRecord,
    audit_for_assertion,
    decision_record,
    record_service_call,
)
from cds_service.backend_auth import current_backend_client, payer_scope_required
from cds_service.errors import BadRequest, Issue
from cds_service.routes import public_base_url, request_json
from cds_service.settings import current_settings
from coverage_policy.model import (
    Decision,
    Policy,
    PreconditionResult,
    RecordedCriterion,
    RuleKind,
    Truth,
)
from dtr.adaptive import (
    QR_CONTEXT,
    FormInputError,
    Knowledge,
    advance,
    assertion_extension_url,
    contained_form,
    extension_value,
    initial_response,
    knowledge_of,
    read_answers,
    step,
)
from dtr.forms import (
    answer_valuesets,
    form_items,
    form_text,
    indication_rules,
    requirements_with,
    rule_for_canonical,
    rule_form,
    valueset_canonical,
)
from dtr.package import (
    PackageRequest,
    outcome,
    package_bundle,
    package_parameters,
    read_logged_errors,
    read_next_question_request,
    read_package_request,
)
from fhir_mappings.episodes import find_pump_episodes, parse_draft_orders
from fhir_mappings.facts import precondition_facts
from fhir_mappings.record import PatientRecord, build_record
from hooks.coverage_information import AssertionContext, coverage_information_for
from hooks.crd_dialect import crd_dialect
from hooks.decide import CoverageRef, EpisodeDecision, decide_episode

logger = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
blueprint = Blueprint("dtr", __name__, url_prefix="/fhir")


def _policy() -> Policy:
    return cast(Policy, current_app.extensions["cds_policy"])


def _now() -> datetime:
    return cast(Callable[[], datetime], current_app.extensions["cds_clock"])()


def _fhir(body: Mapping[str, Any], status: int = 200) -> Response:
    response = cast(Response, current_app.json.response(body))
    response.status_code = status
    response.mimetype = FHIR_JSON
    return response


def _bad(error: FormInputError) -> BadRequest:
    return BadRequest([Issue(p.diagnostics, p.expression) for p in error.problems])


def _next_question_base() -> str:
    return f"{public_base_url()}/fhir/Questionnaire"


def served_forms() -> dict[str, dict[str, Any]]:
    """The per-rule adaptive forms by rule id, as this request's base URL names them
    (built once per base URL: behind a proxy there is one)."""
    cache = current_app.extensions.setdefault("cds_dtr_forms", {})
    base = _next_question_base()
    forms = cache.get(base)  # read once: another request may clear the cache meanwhile
    if forms is None:
        policy, publisher = _policy(), current_settings().payer_name
        as_of = policy.effective.start or _now().date()
        forms = {
            rule.id: rule_form(policy, rule, base, as_of, publisher)
            for rule in indication_rules(policy)
        }
        if len(cache) >= 4:  # Host headers are the client's: never let them grow this
            cache.clear()
        cache[base] = forms
    return cast(dict[str, dict[str, Any]], forms)


def record_dtr_call(
    operation: str,
    client_iss: str | None,
    elapsed: float,
    crd_version: str = "",
    decisions: tuple[DecisionRecord, ...] = (),
) -> None:
    """Record one answered DTR call, of a DTR client (``client_iss``) or of the
    documentation app, like a service call (``service_id`` ``dtr``, ``hook`` the
    operation); never fails the answer (see ``record_service_call``)."""
    record = AuditRecord(
        recorded_at=_now(),
        service_id="dtr",
        hook=operation,
        hook_instance=cast(Callable[[], str], current_app.extensions["cds_new_uuid"])(),
        client_iss=client_iss,
        crd_version=crd_version,
        timings=CallTimings(prefetch=0.0, fetch=0.0, decide=elapsed, total=elapsed),
        decisions=decisions,
    )
    record_service_call(current_app.extensions["cds_store"], record)


def _backend_iss() -> str | None:
    client = current_backend_client()
    return client.client_id if client else None


def _reference(resource: Mapping[str, Any]) -> str | None:
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return None
    return f"{resource['resourceType']}/{resource_id}"


# -- what is known of a decision ---------------------------------------------------------

_UNKNOWN_CONTEXT = (
    "No decision with this context for these orders: a context is honoured only together "
    "with an order it was issued for"
)


def knowledge_of_report(report: Mapping[str, Any]) -> Knowledge:
    """A recorded decision as what the walk knows: its rules and criterion truths (the
    documentation app decides from the same audited decision)."""
    rule_ids = [report["rule_id"]]
    known: dict[str, RecordedCriterion] = {}
    for criterion in report["criteria"]:
        if (
            criterion["rule_kind"] == RuleKind.REQUIREMENT.value
            and criterion["rule_id"] not in rule_ids
        ):
            rule_ids.append(criterion["rule_id"])
        if_answered = criterion.get("if_answered")
        known[criterion["criterion_id"]] = RecordedCriterion(
            Truth(criterion["truth"]),
            bool(criterion["checked"]),
            (Truth(if_answered[0]), Truth(if_answered[1])) if if_answered else None,
        )
    return Knowledge(
        from_crd=not (report["service_id"] == "dtr" and report["hook"] == "questionnaire-package"),
        rule_ids=tuple(rule_ids),
        known=known,
        as_of=date.fromisoformat(report["as_of"]),
        orders=tuple(report["orders"]),
        assertion_id=report["coverage_assertion_id"],
        crd_version=report["crd_version"],
        order_facts=report["order_facts"],
    )


def _decisions_for(context: str, orders: set[str]) -> list[Knowledge]:
    """The recorded decisions of ``context`` about any of ``orders``, the latest per rule."""
    latest: dict[str, Knowledge] = {}
    for report in audit_for_assertion(current_app.extensions["cds_store"], context):
        if orders & set(report["orders"]):  # oldest first: a later one replaces it
            latest[report["rule_id"]] = knowledge_of_report(report)
    if not latest:
        raise BadRequest.single(_UNKNOWN_CONTEXT, "context")
    return list(latest.values())


def _knowledge_without_context(policy: Policy, rule_id: str, today: date) -> Knowledge:
    requirements = requirements_with(policy, policy.rules_by_id[rule_id], today)
    return Knowledge(rule_ids=(rule_id, *(r.id for r in requirements)), known={}, as_of=today)


def _decide_sent(
    policy: Policy,
    orders: tuple[Mapping[str, Any], ...],
    referenced: tuple[Mapping[str, Any], ...],
    today: date,
) -> list[EpisodeDecision]:
    """The pump episodes among ``orders``, each decided as order-sign decides it
    (``decide_episode``) on the orders and the resources sent with them. The resources
    show what they show; what they do not show is unknown, never absent (they are not a
    record). An episode a policy precondition stops (the patient died) is refused."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(o)} for o in orders],
    }
    parsed, _, invalid = parse_draft_orders(bundle, "parameter.order")
    if invalid:
        raise BadRequest.single(
            f"An order is not valid FHIR R4: {invalid[0].problem.message}", "parameter.order"
        )
    draft = build_record({"draftOrders": bundle})
    sent = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(r)} for r in referenced],
    }
    record = build_record({"referenced": sent}) if referenced else PatientRecord()
    before_deciding = precondition_facts(policy, record)
    found = []
    for episode in find_pump_episodes(parsed, record, draft):
        decided = decide_episode(
            episode, record, policy, today, before_deciding=before_deciding, shown_only=True
        )
        if isinstance(decided, PreconditionResult):
            orders_named = ", ".join(o.reference for o in episode.orders)
            raise BadRequest.single(
                form_text()["stopped_by_precondition"].format(
                    orders=orders_named, reason=decided.precondition.text
                ),
                "parameter.order",
            )
        if decided is not None:
            found.append(decided)
    return found


def _known_for_request(
    policy: Policy,
    asked: PackageRequest,
    order_refs: set[str],
    today: date,
    recorded: list[DecisionRecord],
) -> list[Knowledge]:
    """What the forms of a package know: the decisions of its context, or those made on
    its orders and the resources sent with them (appended to ``recorded``)."""
    if asked.context:
        return _decisions_for(asked.context, order_refs)
    if not asked.orders:
        return []
    found = _decide_sent(policy, asked.orders, asked.referenced, today)
    if not found:
        raise BadRequest.single(
            "No order is in scope of this policy (no infusion pump or pump drug)",
            "parameter.order",
        )
    candidates = []
    for item in found:
        refs = tuple(o.reference for o in item.episode.orders)
        # Recorded under an id of its own, which the draft response carries, so the walk
        # knows what the resources showed; not a CRD decision, so never asserted.
        new_id = cast(Callable[[], str], current_app.extensions["cds_new_uuid"])()
        recorded.append(decision_record(item.decision, new_id, refs, item.order_facts))
        candidates.append(
            knowledge_of(
                item.decision,
                orders=refs,
                order_facts=item.order_facts,
                assertion_id=new_id,
                from_crd=False,
            )
        )
    return candidates


# -- $questionnaire-package --------------------------------------------------------------


@blueprint.post("/Questionnaire/$questionnaire-package")
@payer_scope_required("Questionnaire")
def questionnaire_package() -> Response:
    started = time.perf_counter()
    policy, now = _policy(), _now()
    try:
        asked = read_package_request(request_json())
    except FormInputError as error:
        raise _bad(error) from None
    coverage = _reference(asked.coverage)
    if coverage is None:
        raise BadRequest.single(
            "The Coverage needs an id to be named in the response's context", "parameter.coverage"
        )
    patient = (asked.coverage.get("beneficiary") or {}).get("reference") or None
    order_refs = {ref for ref in (_reference(o) for o in asked.orders) if ref}
    wanted: list[tuple[str, Knowledge | None, tuple[str, ...]]] = []  # rule, knowledge, orders
    recorded: list[DecisionRecord] = []
    notes: list[tuple[str, str, str]] = []
    candidates = _known_for_request(policy, asked, order_refs, now.date(), recorded)
    for known in candidates:
        decided = step(policy, known, read_answers(policy, {}))
        if decided is None or decided.finished:
            outcome_text = decided.decision.outcome.value if decided else "not decided"
            notes.append(
                (
                    "information",
                    "informational",
                    form_text()["no_more_documentation"].format(
                        orders=", ".join(known.orders), outcome=outcome_text, rule=known.rule_ids[0]
                    ),
                )
            )
            continue
        wanted.append((known.rule_ids[0], known, known.orders))
    for canonical in asked.questionnaires:
        rule = rule_for_canonical(policy, canonical)
        if rule is None:
            unknown = form_text()["unknown_questionnaire"].format(canonical=canonical)
            if not wanted:
                raise BadRequest.single(unknown, "parameter.questionnaire")
            notes.append(("warning", "not-found", unknown))
            continue
        if all(rule.id != w[0] for w in wanted):
            wanted.append((rule.id, None, tuple(sorted(order_refs))))
    forms = served_forms()
    valuesets = answer_valuesets(policy, now)
    bundles = []
    for rule_id, knowing, orders in wanted:
        rule = policy.rules_by_id[rule_id]
        form = forms[rule_id]
        binds = [
            valuesets[valueset_canonical(policy, i).partition("|")[0]]
            for i in form_items(policy, rule, now.date())
            if i.answer_type == "choice"
        ]
        response = initial_response(
            policy,
            form,
            patient=patient,
            coverage=coverage,
            orders=orders,
            assertion_id=knowing.assertion_id if knowing else None,
            authored=now.isoformat(),
        )
        bundles.append(package_bundle(form, binds, response, f"{public_base_url()}/fhir"))
    if not bundles and not notes:
        notes.append(("information", "informational", form_text()["no_form"]))
    crd_version = next((k.crd_version for _, k, _ in wanted if k and k.crd_version), "")
    record_dtr_call(
        "questionnaire-package",
        _backend_iss(),
        time.perf_counter() - started,
        crd_version,
        tuple(recorded),
    )
    return _fhir(package_parameters(bundles, outcome(notes)))


# -- $next-question ----------------------------------------------------------------------


def _context_of(
    policy: Policy, response: Mapping[str, Any]
) -> tuple[str | None, set[str], str | None]:
    ids = extension_value(response, assertion_extension_url(policy), "valueString")
    references: set[str] = {
        r["reference"]
        for r in extension_value(response, QR_CONTEXT, "valueReference")
        if isinstance(r, Mapping) and isinstance(r.get("reference"), str)
    }
    coverage = next((r for r in references if r.startswith("Coverage/")), None)
    orders = {r for r in references if not r.startswith("Coverage/")}
    return (ids[0] if ids and isinstance(ids[0], str) else None), orders, coverage


def completed_coverage(
    policy: Policy, known: Knowledge, decision: Decision, coverage: str | None
) -> tuple[dict[str, Any], str] | None:
    """The coverage-information a completed form carries, with the new
    coverage-assertion-id it asserts under (None without a CRD context). The
    documentation app completes the same way."""
    if known.assertion_id is None or coverage is None or not known.from_crd:
        return None
    assertion_id = cast(Callable[[], str], current_app.extensions["cds_new_uuid"])()
    ctx = AssertionContext(
        policy=policy,
        crd=crd_dialect(known.crd_version),
        secondary_hook=False,
        coverage=CoverageRef(coverage),
        assertion_id=assertion_id,
        today=_now().date(),
        payer_name=current_settings().payer_name,
        not_retrieved={},
    )
    return coverage_information_for(decision, ctx), assertion_id


@blueprint.post("/Questionnaire/$next-question")
@blueprint.post("/$next-question")
@payer_scope_required("Questionnaire")
def next_question() -> Response:
    started = time.perf_counter()
    policy = _policy()
    try:
        response = read_next_question_request(request_json())
    except FormInputError as error:
        raise _bad(error) from None
    form = contained_form(response)
    if form is None:
        raise BadRequest.single(
            "'questionnaire' must point ('#id') at the contained adaptive Questionnaire",
            "QuestionnaireResponse.questionnaire",
        )
    canonicals = [
        c for c in [*(form.get("derivedFrom") or []), form.get("url")] if isinstance(c, str)
    ]
    rule = next((r for r in (rule_for_canonical(policy, c) for c in canonicals) if r), None)
    if rule is None:
        raise BadRequest.single(
            "The contained Questionnaire is not derived from one of our forms",
            "QuestionnaireResponse.contained",
        )
    asked = frozenset(
        i["linkId"]
        for i in form.get("item") or []
        if isinstance(i, Mapping) and isinstance(i.get("linkId"), str)
    )
    try:
        answers = read_answers(policy, response, asked)
    except FormInputError as error:
        raise _bad(error) from None
    context, orders, coverage = _context_of(policy, response)
    if context is None:
        known = _knowledge_without_context(policy, rule.id, _now().date())
    else:
        matching = [k for k in _decisions_for(context, orders) if k.rule_ids[0] == rule.id]
        if not matching:
            raise BadRequest.single(
                "The form is not the one of this context's decision",
                "QuestionnaireResponse.contained",
            )
        known = matching[0]
    done = step(policy, known, answers)
    if done is None:  # the knowledge names a rule this policy no longer has
        raise BadRequest.single(
            "The decision's rule is not in the current policy", "QuestionnaireResponse"
        )
    completed = (
        completed_coverage(policy, known, done.decision, coverage)
        if done.finished and done.asserts
        else None
    )
    try:
        advanced = advance(policy, response, done, completed[0] if completed else None)
    except FormInputError as error:
        raise _bad(error) from None
    recorded: tuple[DecisionRecord, ...] = ()
    if completed is not None:
        orders_decided = tuple(sorted(orders & set(known.orders))) or known.orders
        recorded = (
            decision_record(done.decision, completed[1], orders_decided, known.order_facts),
        )
    record_dtr_call(
        "next-question",
        _backend_iss(),
        time.perf_counter() - started,
        known.crd_version or "",
        recorded,
    )
    return _fhir(
        {"resourceType": "Parameters", "parameter": [{"name": "return", "resource": advanced}]}
    )


# -- ValueSet/$expand, metadata, $log-questionnaire-errors ---------------------------------


@blueprint.get("/ValueSet/$expand")
@payer_scope_required("ValueSet")
def expand_valueset() -> Response:
    started = time.perf_counter()
    canonical = request.args.get("url", "")
    url, bar, version = canonical.partition("|")
    valueset = answer_valuesets(_policy(), _now()).get(url)
    if valueset is None or (bar and version != valueset["version"]):
        raise BadRequest.single(f"No ValueSet '{canonical}' here", "url")
    record_dtr_call("expand", _backend_iss(), time.perf_counter() - started)
    return _fhir(valueset)


@blueprint.get("/metadata")
def capability_statement() -> Response:
    base = f"{public_base_url()}/fhir"
    operations = [
        (
            "questionnaire-package",
            "http://hl7.org/fhir/us/davinci-dtr/OperationDefinition/questionnaire-package",
        ),
        (
            "next-question",
            "http://hl7.org/fhir/uv/sdc/OperationDefinition/Questionnaire-next-question",
        ),
        (
            "log-questionnaire-errors",
            "http://hl7.org/fhir/us/davinci-dtr/OperationDefinition/log-questionnaire-errors",
        ),
    ]
    return _fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": (_policy().effective.start or _now().date()).isoformat(),
            "publisher": current_settings().payer_name,
            "kind": "instance",
            "instantiates": [
                "http://hl7.org/fhir/us/davinci-dtr/CapabilityStatement/dtr-payer-service"
            ],
            "implementation": {
                "description": "Payer DTR service: adaptive documentation forms",
                "url": base,
            },
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Questionnaire",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {"name": "url", "type": "uri"},
                                {"name": "_id", "type": "token"},
                            ],
                            "operation": [
                                {"name": name, "definition": definition}
                                for name, definition in operations
                            ],
                        },
                        {
                            "type": "ValueSet",
                            "operation": [
                                {
                                    "name": "expand",
                                    "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
                                }
                            ],
                        },
                    ],
                }
            ],
        }
    )


@blueprint.post("/Questionnaire/$log-questionnaire-errors")
@payer_scope_required("Questionnaire")
def log_questionnaire_errors() -> Response:
    started = time.perf_counter()
    try:
        canonicals, outcomes = read_logged_errors(request_json())
    except FormInputError as error:
        raise _bad(error) from None
    issues = sum(len(o.get("issue") or []) for o in outcomes)
    # The canonicals and issue counts only: a client's diagnostics are free text.
    logger.warning(
        "dtr questionnaire errors reported: %s (%d issues)", ", ".join(canonicals)[:500], issues
    )
    record_dtr_call("log-questionnaire-errors", _backend_iss(), time.perf_counter() - started)
    return Response(status=200)
