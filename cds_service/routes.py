"""HTTP routes: discovery, service calls and feedback. Thin: parse, hand over, answer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from gunicorn.http.errors import ParseException
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from cds_service import operations
from cds_service.audit import (
    AuditRecord,
    CallTimings,
    build_audit_record,
    record_service_call,
)
from cds_service.auth import ClientIdentity, authenticate_client
from cds_service.decision_page import DECISION_PAGE_PATH
from cds_service.envelope import parse_hook_request, parse_json_body
from cds_service.error_pages import error_page, is_people_page
from cds_service.errors import (
    BadRequest,
    CdsServiceError,
    PreconditionFailed,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnknownService,
    operation_outcome,
)
from cds_service.feedback import parse_feedback, store_feedback
from cds_service.prefetch import read_context_resources, resolve_prefetch
from cds_service.rate_limit import charge_verified_client
from cds_service.settings import current_settings
from hooks import SERVICES, context_validator
from hooks.request import CoverageProblem, DataUnavailable
from hooks.service import HookEnvironment, HookResult, ServiceDefinition

logger = logging.getLogger(__name__)

blueprint = Blueprint("cds", __name__)


def public_base_url() -> str:
    """The base URL clients call us at: ``CDS_PUBLIC_URL`` behind a proxy, else the request's."""
    configured = current_settings().public_url
    return configured.rstrip("/") if configured else request.host_url.rstrip("/")


@blueprint.get("/cds-services")
def discovery() -> Response:
    return jsonify({"services": [service.discovery_entry() for service in SERVICES.values()]})


def request_json() -> Any:
    """The request body as JSON; a body the HTTP layer cannot read is the client's 400."""
    try:
        raw = request.get_data()
    except (ParseException, OSError, ClientDisconnected) as exc:
        # Raised while reading: a malformed chunked encoding, or a body cut short.
        raise BadRequest.single(
            "The request body could not be read: its transfer encoding is malformed or it"
            " ended early"
        ) from exc
    return parse_json_body(raw)


@blueprint.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    started = time.perf_counter()
    service = SERVICES.get(service_id)
    if service is None:
        raise UnknownService.single(f"No CDS service with id '{service_id}'", "id")
    client = authenticate_client(
        current_settings(), endpoint_url=f"{public_base_url()}/cds-services/{service_id}"
    )
    charge_verified_client(client)
    answered = answer_call(service, request_json(), client, started)
    operations.count_decisions(service_id, answered.result.decisions)
    call_id = record_service_call(current_app.extensions["cds_store"], answered.record)
    result = answered.result
    if call_id is None and answered.decision_page_url:
        _drop_links_to(result.response, answered.decision_page_url)
    logger.info(
        "answered %s hookInstance=%s decisions=%s",
        service_id,
        answered.record.hook_instance,
        [(d.rule_id, d.outcome.value) for d in result.decisions],
    )
    return jsonify(result.response)


@dataclass(frozen=True, slots=True)
class AnsweredCall:
    """A service call decided: the hook's result, the audit record to write for it and
    the decision page its cards may link to."""

    result: HookResult
    record: AuditRecord
    decision_page_url: str | None


def answer_call(
    service: ServiceDefinition, body: Any, client: ClientIdentity | None, started: float
) -> AnsweredCall:
    """Decide one call of ``service`` whose JSON ``body`` has been read (in a request
    context): validate it, read and fetch what it needs, run the hook. Nothing is
    recorded or counted here."""
    hook_request = parse_hook_request(
        body,
        expected_hook=service.hook,
        context_validator=context_validator(service),
    )
    operations.bind_hook_instance(hook_request.hook_instance)
    prefetch_started = time.perf_counter()
    page_token = current_app.extensions["cds_new_page_token"]()
    base_url = public_base_url()
    environment = HookEnvironment(
        now=current_app.extensions["cds_clock"](),
        new_uuid=current_app.extensions["cds_new_uuid"],
        payer_name=current_settings().payer_name,
        base_url=base_url,
        policy=current_app.extensions["cds_policy"],
        decision_page_url=f"{base_url}{DECISION_PAGE_PATH}{page_token}",
        documentation_app_url=(
            f"{base_url}/dtr/launch" if current_settings().dtr_card_link else None
        ),
    )
    fhir_started = time.monotonic()  # one FHIR deadline for everything the call reads
    try:
        read = read_context_resources(
            service, hook_request, current_settings(), client, fhir_started
        )
        scope = service.scope(hook_request, read, environment.policy, environment.now.date())
        clinical = resolve_prefetch(
            service,
            hook_request,
            current_settings(),
            client,
            keys=scope.prefetch_keys,
            started=fhir_started,
        )
        decide_started = time.perf_counter()
        result = service.handler(hook_request, scope, clinical, environment)
    except CoverageProblem as problem:
        raise BadRequest.single(problem.diagnostics, problem.expression) from problem
    except DataUnavailable as problem:
        raise PreconditionFailed.single(problem.diagnostics, problem.expression) from problem
    finished = time.perf_counter()
    record = build_audit_record(
        service_id=service.id,
        hook_request=hook_request,
        client_iss=client.issuer if client else None,
        result=result,
        timings=CallTimings(
            prefetch=decide_started - prefetch_started,
            fetch=clinical.fetch_seconds,
            decide=finished - decide_started,
            total=finished - started,
        ),
        recorded_at=environment.now,
        decision_page_token=page_token,
    )
    return AnsweredCall(result, record, environment.decision_page_url)


def _drop_links_to(response: dict[str, Any], page_url: str) -> None:
    """A decision page that was not recorded does not exist: no card may link to it."""
    for card in response.get("cards", ()):
        links = [link for link in card.get("links", ()) if not link["url"].startswith(page_url)]
        if "links" in card:
            card["links"] = links


@blueprint.post("/cds-services/<service_id>/feedback")
def receive_feedback(service_id: str) -> Response:
    """CDS Hooks feedback about cards this service issued: stored, answered ``{}``."""
    if service_id not in SERVICES:
        raise UnknownService.single(f"No CDS service with id '{service_id}'", "id")
    client = authenticate_client(
        current_settings(), endpoint_url=f"{public_base_url()}/cds-services/{service_id}/feedback"
    )
    charge_verified_client(client)
    entries = parse_feedback(request_json())
    try:
        store_feedback(
            current_app.extensions["cds_store"],
            service_id=service_id,
            client_iss=client.issuer if client else None,
            entries=entries,
            received_at=current_app.extensions["cds_clock"](),
        )
    except SQLAlchemyError as exc:
        logger.error(
            "feedback for %s NOT STORED: database unavailable (%s)",
            service_id,
            type(exc).__name__,
            exc_info=exc,
        )
        raise ServiceUnavailable.single(
            "Feedback cannot be stored right now; send it again later"
        ) from exc
    return jsonify({})


@blueprint.app_errorhandler(CdsServiceError)
def answer_service_error(error: CdsServiceError) -> tuple[Response, int]:
    response = jsonify(error.operation_outcome())
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"  # RFC 6750 section 3
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after_s)  # RFC 6585 section 4
    return response, error.status


@blueprint.app_errorhandler(HTTPException)
def answer_http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    if is_people_page(request.path):
        page = error_page(error.name, error.description or error.name)
        return Response(page, mimetype="text/html"), status
    code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(status, "exception")
    return jsonify(operation_outcome(error.description or error.name, code)), status


@blueprint.app_errorhandler(Exception)
def answer_unexpected_error(error: Exception) -> tuple[Response, int]:
    # Never a stack trace to the client; the log keeps it for operators.
    logger.exception("unexpected error answering %s", request.path)
    return jsonify(operation_outcome("Internal error; the request was not processed")), 500
