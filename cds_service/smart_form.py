"""What the documentation app shows and saves: the order and the decision so far, the
questions still open, and the QuestionnaireResponse written to the EHR.

When the form opens, the order (``fhirContext``, or ``appContext`` ``orders``) and the
patient's record are read from the EHR's FHIR server with the user's token, by the same
prefetch code, allowlist and deadline as a service call (the app acts as order-sign
would), and decided by the same engine. That decision, as a ``dtr.adaptive.Knowledge``,
is kept in the session: each step decides again on it and the answers so far
(``dtr.adaptive.step``), so the form asks only what could still change the outcome.

A draft order being signed is often not on the EHR's FHIR server yet. When it cannot be
read, the form works from the coverage-assertion-id of the ``appContext``: the audit
trail knows that decision's orders, rules and criterion truths (and honours it only
together with an order it was about), and the page says so.

Nothing is written to the EHR until the user saves: then the QuestionnaireResponse
(``in-progress``, or ``completed`` on finish) goes to the EHR's FHIR server, with the
DTR ``qr-context`` (orders and Coverage), ``author`` the user, ``subject`` the patient,
and each answer's DTR ``information-origin`` (entered by hand, by that user).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, cast

import requests

from cds_service.audit import audit_for_assertion
from cds_service.dtr_routes import knowledge_of_report
from cds_service.errors import FhirQueryFailed
from cds_service.fhir_client import (
    NOT_ALLOWED,
    REDIRECTED,
    REFUSED,
    SERVER_ERROR,
    TIMED_OUT,
    UNREACHABLE,
    UNREADABLE,
    FhirReader,
    allowed_fhir_servers,
    fhir_server_allowed,
    shared_session,
)
from cds_service.json_input import UnreadableJson, loads_untrusted
from cds_service.prefetch import resolve_prefetch
from cds_service.settings import Settings
from cds_service.store import Store
from coverage_policy.model import (
    DocumentationItem,
    FactValue,
    Outcome,
    Policy,
    RecordedCriterion,
    Truth,
)
from dtr.adaptive import Knowledge, Step, initial_response, knowledge_of, read_answers, step
from dtr.forms import form_text, question
from fhir_mappings.episodes import ORDER_TYPES
from hooks import order_sign
from hooks.decide import deliberate
from hooks.request import DataUnavailable, FhirAuthorization, HookRequest, RequestNotAnswerable

logger = logging.getLogger(__name__)

INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
DTR_QR_PROFILE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/dtr-questionnaireresponse"
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ASSERTION_KEYS = ("coverage-assertion-id", "coverageAssertionId", "coverage_assertion_id")


class FormUnavailable(Exception):
    """Why the form cannot be shown: a sentence for the clinician, and an HTTP status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def app_words() -> dict[str, Any]:
    """What the documentation app's pages say (``dtr/form_text.json`` ``app``)."""
    return cast(dict[str, Any], form_text()["app"])


def error_page(key: str, **values: Any) -> tuple[str, str]:
    """The title and the message of the error page ``key``, its placeholders filled."""
    words = app_words()["errors"][key]
    return str(words["title"]), str(words["message"]).format(**values)


# -- the launch context ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchContext:
    patient: str | None  # "Patient/<id>"
    orders: tuple[str, ...]
    coverage: str | None
    assertion_id: str | None
    fhir_user: str | None


def launch_context(
    data: Mapping[str, Any], references: list[str], app: Mapping[str, Any]
) -> LaunchContext:
    """The orders, Coverage and coverage-assertion-id the EHR launched the app with."""
    orders: list[str] = []
    coverage = None
    listed = app.get("orders")
    app_orders: list[Any] = listed if isinstance(listed, list) else []
    for reference in [*references, *(o for o in app_orders if isinstance(o, str))]:
        match = _REFERENCE.fullmatch(reference)
        if match is None:
            continue
        if match.group(1) == "Coverage":
            coverage = coverage or reference
        elif match.group(1) in ORDER_TYPES and reference not in orders:
            orders.append(reference)
    assertion = next((app[k] for k in ASSERTION_KEYS if isinstance(app.get(k), str)), None)
    patient = data.get("patient")
    fhir_user = data.get("fhir_user")
    return LaunchContext(
        patient=f"Patient/{patient}"
        if isinstance(patient, str) and _ID.fullmatch(patient)
        else None,
        orders=tuple(orders),
        coverage=coverage,
        assertion_id=assertion,
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
    )


# -- the form's state, kept in the session -------------------------------------------------


def knowledge_to_json(known: Knowledge) -> dict[str, Any]:
    return {
        "rule_ids": list(known.rule_ids),
        "known": {
            c: [
                r.truth.value,
                r.checked,
                [t.value for t in r.if_answered] if r.if_answered else None,
            ]
            for c, r in known.known.items()
        },
        "as_of": known.as_of.isoformat(),
        "orders": list(known.orders),
        "assertion_id": known.assertion_id,
        "crd_version": known.crd_version,
        "coverage": known.coverage,
        "order_facts": dict(known.order_facts),
        "from_crd": known.from_crd,
    }


def knowledge_from_json(data: Mapping[str, Any]) -> Knowledge:
    return Knowledge(
        rule_ids=tuple(data["rule_ids"]),
        known={
            c: RecordedCriterion(
                Truth(v[0]), bool(v[1]), (Truth(v[2][0]), Truth(v[2][1])) if v[2] else None
            )
            for c, v in data["known"].items()
        },
        as_of=date.fromisoformat(data["as_of"]),
        orders=tuple(data["orders"]),
        assertion_id=data.get("assertion_id"),
        crd_version=data.get("crd_version"),
        coverage=data.get("coverage"),
        order_facts=dict(data.get("order_facts") or {}),
        from_crd=bool(data.get("from_crd", True)),
    )


# -- reading the order and the record -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """What the form starts from."""

    knowledge: Knowledge
    source: str  # "record": decided on the EHR's record now; "audit": from the CRD decision
    order_text: str
    shown_in_record: tuple[str, ...]  # what the record already shows (criteria met)


def _reader(iss: str, token: str, settings: Settings, started: float) -> FhirReader:
    limits = settings.fhir_limits
    return FhirReader(
        base_url=iss, access_token=token, deadline=started + limits.deadline_s, limits=limits
    )


def _order_text(
    policy: Policy, decision_rule: str, orders: tuple[str, ...], hcpcs: str | None
) -> str:
    rule = policy.rules_by_id.get(decision_rule)
    what = rule.title if rule else decision_rule
    code = f" (HCPCS {hcpcs})" if hcpcs else ""
    return f"{what}{code}, order {', '.join(orders)}"


def open_form(
    policy: Policy,
    settings: Settings,
    store: Store,
    data: Mapping[str, Any],
    context: LaunchContext,
    today: date,
) -> Opened:
    """Read the order and the record and decide them; else work from the audit trail."""
    iss, token = str(data["iss"]), str(data["access_token"])
    if not context.orders and context.assertion_id is None:
        raise FormUnavailable(400, *error_page("no_order"))
    if not fhir_server_allowed(iss, allowed_fhir_servers(settings, None)):
        raise FormUnavailable(403, *error_page("ehr_not_allowed", server=NOT_ALLOWED[4:]))
    started = time.monotonic()
    reader = _reader(iss, token, settings, started)
    read: list[dict[str, Any]] = []
    failure: FhirQueryFailed | None = None
    for reference in context.orders:
        try:
            resource = reader.fetch(reference)
        except FhirQueryFailed as exc:
            failure = exc
            break
        if (
            not isinstance(resource, dict)
            or f"{resource.get('resourceType')}/{resource.get('id')}" != reference
        ):
            failure = FhirQueryFailed(UNREADABLE, "not the order asked for")
            break
        read.append(resource)
    if context.orders and failure is None:
        return _decide_on_record(policy, settings, data, context, read, started, today)
    if context.assertion_id is None:
        words = app_words()["errors"]["order_unreadable"]
        reason = failure.reason if failure else words["no_order_named"]
        raise FormUnavailable(502, *error_page("order_unreadable", reason=reason))
    return _from_audit(policy, store, context, context.assertion_id, failure)


def _decide_on_record(
    policy: Policy,
    settings: Settings,
    data: Mapping[str, Any],
    context: LaunchContext,
    orders: list[dict[str, Any]],
    started: float,
    today: date,
) -> Opened:
    patient_id = context.patient.partition("/")[2] if context.patient else None
    if patient_id is None:
        subject = orders[0].get("subject")
        reference = subject.get("reference") if isinstance(subject, Mapping) else None
        match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        patient_id = match.group(2) if match and match.group(1) == "Patient" else None
    if patient_id is None:
        raise FormUnavailable(400, *error_page("no_patient"))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": o} for o in orders],
    }
    hook_request = HookRequest(
        hook=order_sign.HOOK,
        hook_instance="documentation-app",
        context={
            "userId": context.fhir_user or "Practitioner/unknown",
            "patientId": patient_id,
            "draftOrders": bundle,
        },
        prefetch={},
        fhir_server=str(data["iss"]),
        fhir_authorization=FhirAuthorization(
            access_token=str(data["access_token"]),
            token_type="Bearer",
            scope=str(data.get("scope") or ""),
            subject="documentation-app",
            patient=patient_id,
        ),
    )
    service = order_sign.SERVICE
    scope = service.scope(hook_request, {}, policy, today)
    clinical = resolve_prefetch(
        service, hook_request, settings, None, keys=scope.prefetch_keys, started=started
    )
    try:
        deliberation = deliberate(hook_request, clinical, scope, policy, today)
    except DataUnavailable as exc:
        reasons = sorted(set(clinical.unavailable.values()))
        why = app_words()["errors"]["record_unreadable"]["why"]
        raise FormUnavailable(
            502,
            *error_page(
                "record_unreadable", why=why.format(reasons="; ".join(reasons)) if reasons else ""
            ),
        ) from exc
    except RequestNotAnswerable as exc:
        raise FormUnavailable(
            400, *error_page("not_decidable", diagnostics=exc.diagnostics)
        ) from exc
    if not deliberation.decisions:
        raise FormUnavailable(200, *error_page("nothing_to_document"))
    chosen = next(
        (d for d in deliberation.decisions if d.outcome is Outcome.CONDITIONAL),
        deliberation.decisions[0],
    )
    references = tuple(o.reference for o in chosen.episode.orders)
    coverage = (
        deliberation.coverage.reference if deliberation.coverage is not None else context.coverage
    )
    # Decided here and now on the record; it completes a CRD decision when the launch
    # names one (its coverage-assertion-id), and only then may assert coverage.
    known = replace(
        knowledge_of(
            chosen.decision,
            orders=references,
            order_facts=chosen.order_facts,
            assertion_id=context.assertion_id,
            from_crd=context.assertion_id is not None,
        ),
        coverage=coverage,
    )
    shown = tuple(
        f"{r.criterion.text}: {'; '.join(e.summary for e in r.evidence) or 'in the record'}"
        for rule in chosen.decision.deciding_results
        for r in rule.results
        if r.truth is Truth.MET and r.evidence and r.deciding
    )
    return Opened(
        known,
        "record",
        _order_text(policy, chosen.decision.rule_id, references, chosen.episode.hcpcs),
        shown,
    )


def _from_audit(
    policy: Policy,
    store: Store,
    context: LaunchContext,
    assertion_id: str,
    failure: FhirQueryFailed | None,
) -> Opened:
    reports = [
        r
        for r in audit_for_assertion(store, assertion_id)
        if set(context.orders) & set(r["orders"])
    ]
    if not reports:
        why = app_words()["errors"]["no_decision_for_order"]["why"]
        raise FormUnavailable(
            404,
            *error_page(
                "no_decision_for_order", why=why.format(reason=failure.reason) if failure else ""
            ),
        )
    known = replace(knowledge_of_report(reports[-1]), coverage=context.coverage)
    return Opened(known, "audit", _order_text(policy, known.rule_ids[0], known.orders, None), ())


# -- answers ---------------------------------------------------------------------------------


def answer_json(item: DocumentationItem, raw: str) -> dict[str, Any] | None:
    """A form field's value as a QuestionnaireResponse answer value; None when empty or
    not a value the item takes."""
    raw = raw.strip()
    if not raw:
        return None
    if item.answer_type == "boolean":
        return {"yes": {"valueBoolean": True}, "no": {"valueBoolean": False}}.get(raw)
    if item.answer_type == "choice":
        return {"valueCoding": {"code": raw}} if raw in {c for c, _ in item.options} else None
    if item.answer_type == "decimal":
        try:
            number = float(raw)
        except ValueError:
            return None
        if not math.isfinite(number) or number < 0:
            return None
        return {"valueDecimal": int(number) if number.is_integer() else number}
    if _DATE.fullmatch(raw):
        try:
            date.fromisoformat(raw)
        except ValueError:
            return None
        return {"valueDate": raw}
    return None


def field_value(answer: Mapping[str, Any] | None) -> str:
    """An answer value as its form field shows it."""
    if not answer:
        return ""
    if "valueBoolean" in answer:
        return "yes" if answer["valueBoolean"] else "no"
    if "valueCoding" in answer:
        return str(answer["valueCoding"].get("code", ""))
    if "valueDecimal" in answer:
        return str(answer["valueDecimal"])
    return str(answer.get("valueDate", ""))


def response_resource(
    policy: Policy,
    form: Mapping[str, Any],
    known: Knowledge,
    *,
    patient: str | None,
    author: str | None,
    shown: list[str],
    answers: Mapping[str, Mapping[str, Any]],
    status: str,
    resource_id: str | None,
    authored: datetime,
    coverage_information: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The QuestionnaireResponse the app writes to the EHR: DTR's adaptive form contained
    (the questions shown), ``qr-context`` (orders and Coverage), the answers with their
    ``information-origin``."""
    response = initial_response(
        policy,
        form,
        patient=patient,
        coverage=known.coverage,
        orders=known.orders,
        assertion_id=known.assertion_id,
        authored=authored.isoformat(),
    )
    if coverage_information is not None:
        response["extension"].append(dict(coverage_information))
    response["meta"] = {"profile": [DTR_QR_PROFILE]}
    if resource_id:
        response = {
            "resourceType": "QuestionnaireResponse",
            "id": resource_id,
            **{k: v for k, v in response.items() if k != "resourceType"},
        }
    response["contained"][0]["item"] = [question(policy, policy.documentation[i]) for i in shown]
    response["status"] = status
    if author:
        response["author"] = {"reference": author}
    origin: list[dict[str, Any]] = [{"url": "source", "valueCode": "manual"}]
    if author:
        origin.append({"url": "author", "valueReference": {"reference": author}})
    items = []
    for link_id in shown:
        value = answers.get(link_id)
        if value is None:
            continue
        spec = policy.documentation[link_id]
        items.append(
            {
                "linkId": link_id,
                "text": spec.text,
                "answer": [
                    {
                        **value,
                        "extension": [{"url": INFORMATION_ORIGIN, "extension": origin}],
                    }
                ],
            }
        )
    if items:
        response["item"] = items
    return response


def walk(policy: Policy, known: Knowledge, response: Mapping[str, Any]) -> Step:
    """Decide again on the knowledge and the response's answers."""
    answers: dict[str, FactValue] = read_answers(policy, response)
    done = step(policy, known, answers)
    if done is None:
        raise FormUnavailable(409, *error_page("policy_changed"))
    return done


# -- writing to the EHR ------------------------------------------------------------------------


def write_response(
    iss: str,
    token: str,
    resource: Mapping[str, Any],
    settings: Settings,
) -> str:
    """Create (POST) or update (PUT) the QuestionnaireResponse on the EHR's FHIR server
    with the user's token; its id there. ``FhirQueryFailed`` when it was not saved."""
    if not fhir_server_allowed(iss, allowed_fhir_servers(settings, None)):
        raise FhirQueryFailed(NOT_ALLOWED)
    limits = settings.fhir_limits
    base = iss.rstrip("/")
    resource_id = resource.get("id")
    url = f"{base}/QuestionnaireResponse" + (f"/{resource_id}" if resource_id else "")
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    }
    timeout = limits.call_timeout_s
    try:
        answer = shared_session().request(
            "PUT" if resource_id else "POST",
            url,
            json=dict(resource),
            headers=headers,
            timeout=(timeout, timeout),
            allow_redirects=False,
        )
    except requests.Timeout:
        raise FhirQueryFailed(TIMED_OUT, "Timeout") from None
    except requests.RequestException as exc:
        raise FhirQueryFailed(UNREACHABLE, type(exc).__name__) from None
    if 300 <= answer.status_code < 400:
        raise FhirQueryFailed(REDIRECTED, f"HTTP {answer.status_code}")
    if answer.status_code in (401, 403):
        raise FhirQueryFailed(REFUSED, f"HTTP {answer.status_code}")
    if answer.status_code not in (200, 201):
        raise FhirQueryFailed(SERVER_ERROR, f"HTTP {answer.status_code}")
    saved_id: Any = None
    try:
        body = loads_untrusted(answer.content[: limits.max_response_bytes])
        if isinstance(body, dict):
            saved_id = body.get("id")
    except UnreadableJson:
        body = None
    if not isinstance(saved_id, str):
        location = answer.headers.get("Location", "")
        match = re.search(r"QuestionnaireResponse/([A-Za-z0-9\-.]{1,64})", location)
        saved_id = match.group(1) if match else resource_id
    if not isinstance(saved_id, str) or not _ID.fullmatch(saved_id):
        raise FhirQueryFailed(UNREADABLE, "no id")
    return saved_id
