"""Running the service: health, readiness, Prometheus metrics and JSON-lines logs.

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process answers HTTP.
- ``GET /readyz``: whether clinical calls can be answered now, with the state of each
  dependency. The service decides without its database (the audit trail then goes
  unrecorded), so a database that is down is reported (``"database": "unavailable"``)
  but is not by itself a 503. It is one when the JWT replay cache lives in that database
  and every call must be signed (``CDS_AUTH=required``): no call can be answered then.
- ``GET /metrics``: Prometheus text format, only to the addresses ``CDS_METRICS_ALLOW``
  lists (loopback by default); a request that came through a proxy (``Forwarded``,
  ``X-Forwarded-For``) is judged by every address it names too, so a proxy on loopback
  does not open it to the world. Under ``serve`` (several gunicorn workers) the metrics
  are kept in prometheus-client's multi-process mode, one set of files per worker in the
  directory ``PROMETHEUS_MULTIPROC_DIR`` names (a fresh temporary one by default), and
  ``/metrics`` answers the sum over all workers whichever worker is asked.

Metrics (labels are bounded: service ids, rule ids, outcomes, fixed reason codes):

=====================================  ====================================================
``cds_service_calls_total``            service and feedback calls: ``service``, ``kind``
                                       (``hook`` or ``feedback``), HTTP ``status``
``cds_service_call_duration_seconds``  histogram of the same calls: ``service``, ``kind``
``cds_decisions_total``                coverage decisions: ``service``, ``rule``, ``outcome``
``cds_fhir_fetch_failures_total``      failed queries to an EHR's FHIR server: ``reason``
``cds_audit_write_failures_total``     calls answered but not recorded: ``reason``
``cds_jwt_refusals_total``             client JWTs refused (401): ``reason``
=====================================  ====================================================

``CDS_LOG_FORMAT=json`` logs one JSON object per line (``time``, ``level``, ``logger``,
``message``, ``exception`` when there is one), and every line logged while a service
call is answered, once its body has been read, carries its ``hookInstance``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, has_request_context, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from cds_service.config import ConfigError
from cds_service.errors import operation_outcome
from cds_service.retention import RetentionSweeper

if TYPE_CHECKING:  # imported when first used: prometheus-client reads its directory then
    from prometheus_client import Counter, Histogram

    from cds_service.settings import Settings
    from cds_service.store import Store
    from hooks.decide import EpisodeDecision

logger = logging.getLogger(__name__)

blueprint = Blueprint("operations", __name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A hookInstance as a body names it, before the body is parsed (only characters of ids).
_HOOK_INSTANCE = re.compile(rb'"hookInstance"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Refusal reasons (cds_service.auth) by prefix, most specific first, as short label codes.
_JWT_REASONS: tuple[tuple[str, str], ...] = (
    ("no bearer token", "missing_token"),
    ("malformed token", "malformed"),
    ("algorithm", "algorithm"),
    ("typ is not", "typ"),
    ("no kid", "kid"),
    ("unknown kid", "kid"),
    ("no iss", "issuer"),
    ("issuer not trusted", "issuer"),
    ("jku", "jku"),
    ("JWKS", "jwks"),
    ("issuer has no keys", "key"),
    ("key is not", "key"),
    ("unusable key", "key"),
    ("token rejected: ExpiredSignatureError", "expired"),
    ("token rejected: InvalidAudienceError", "audience"),
    ("token rejected: InvalidSignatureError", "signature"),
    ("token rejected: ImmatureSignatureError", "not_yet_valid"),
    ("token rejected: InvalidIssuedAtError", "not_yet_valid"),
    ("token rejected: MissingRequiredClaimError", "missing_claim"),
    ("token rejected", "claims"),
    ("iat in the future", "not_yet_valid"),
    ("iat or exp", "claims"),
    ("token lives too long", "lifetime"),
    ("jti replayed", "replay"),
    ("jti is not", "claims"),
)


@dataclass(frozen=True, slots=True)
class _Metrics:
    calls: Counter
    call_seconds: Histogram
    decisions: Counter
    fhir_failures: Counter
    audit_failures: Counter
    jwt_refusals: Counter


@cache
def metrics() -> _Metrics:
    """The process's metrics, created on first use: after ``serve`` has chosen the
    multi-process directory, which prometheus-client reads when it is first imported."""
    from prometheus_client import Counter, Histogram

    return _Metrics(
        calls=Counter(
            "cds_service_calls",
            "CDS service and feedback calls answered, by service, kind and HTTP status",
            ["service", "kind", "status"],
        ),
        call_seconds=Histogram(
            "cds_service_call_duration_seconds",
            "Time to answer a CDS service or feedback call",
            ["service", "kind"],
            buckets=DURATION_BUCKETS,
        ),
        decisions=Counter(
            "cds_decisions",
            "Coverage decisions, by service, policy rule and outcome",
            ["service", "rule", "outcome"],
        ),
        fhir_failures=Counter(
            "cds_fhir_fetch_failures",
            "Queries to an EHR's FHIR server that failed, by reason",
            ["reason"],
        ),
        audit_failures=Counter(
            "cds_audit_write_failures",
            "Service calls answered but not recorded in the audit trail, by reason",
            ["reason"],
        ),
        jwt_refusals=Counter(
            "cds_jwt_refusals",
            "Client JWTs refused, by reason",
            ["reason"],
        ),
    )


# -- what the rest of the service calls, one line each ----------------------------------


def count_decisions(service_id: str, decisions: Iterable[EpisodeDecision]) -> None:
    """Count each coverage decision of an answered call."""
    for item in decisions:
        decided = item.decision
        metrics().decisions.labels(service_id, decided.rule_id, decided.outcome.value).inc()


def count_fhir_failures(results: Iterable[object]) -> None:
    """Count the ``FhirQueryFailed`` among the results of a request's FHIR queries."""
    from cds_service.errors import FhirQueryFailed

    for result in results:
        if isinstance(result, FhirQueryFailed):
            metrics().fhir_failures.labels(fhir_failure_code(result.reason)).inc()


def count_audit_failure(reason: str) -> None:
    """Count a call not recorded: ``database_backoff`` (a recent failure, not retried yet),
    ``database_error`` or ``error``."""
    metrics().audit_failures.labels(reason).inc()


def count_jwt_refusal(reason: str) -> None:
    """Count a refused client JWT; ``reason`` is the text ``cds_service.auth`` logs."""
    metrics().jwt_refusals.labels(jwt_refusal_code(reason)).inc()


def bind_hook_instance(hook_instance: str) -> None:
    """Tag the rest of this request's log lines with its ``hookInstance``."""
    if has_request_context():
        g.cds_hook_instance = hook_instance


@cache
def _fhir_codes() -> dict[str, str]:
    from cds_service import fhir_client as f

    return {
        f.TIMED_OUT: "timeout",
        f.REFUSED: "refused",
        f.NOT_FOUND: "not_found",
        f.SERVER_ERROR: "server_error",
        f.UNREADABLE: "unreadable",
        f.TOO_LARGE: "too_large",
        f.TOO_MANY_PAGES: "too_many_pages",
        f.REDIRECTED: "redirected",
        f.UNREACHABLE: "unreachable",
        f.NOT_ALLOWED: "not_allowed",
    }


def fhir_failure_code(reason: str) -> str:
    """The metric label of a ``FhirQueryFailed`` reason."""
    return _fhir_codes().get(reason, "other")


def jwt_refusal_code(reason: str) -> str:
    """The metric label of a JWT refusal reason."""
    return next((code for prefix, code in _JWT_REASONS if reason.startswith(prefix)), "other")


# -- health and readiness ---------------------------------------------------------------


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _database_state(store: Store) -> str:
    if store.writes_suspended():
        return "unavailable"  # a write failed moments ago; not retried before the back-off
    try:
        with store.reading() as connection:
            connection.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        logger.warning(
            "readiness: database %s unavailable (%s)", store.describe(), type(exc).__name__
        )
        return "unavailable"
    return "ok"


def readiness(app: Flask) -> tuple[dict[str, Any], int]:
    """The readiness body and status: 503 only when no clinical call could be answered."""
    from cds_service.replay import ReplayCache
    from cds_service.settings import app_settings

    settings = app_settings(app)
    policy = app.extensions["cds_policy"]
    database = _database_state(app.extensions["cds_store"])
    replay_in_database = isinstance(app.extensions.get("cds_replay_cache"), ReplayCache)
    replay = database if replay_in_database else "in-process"
    signed_only = settings.auth_required
    ready = not (signed_only and replay == "unavailable")
    if ready and database == "ok":
        answers = "all calls"
    elif ready:
        answers = "unsigned calls only" if replay == "unavailable" else "all calls"
    else:
        answers = "none: signed calls cannot be checked for replay without the database"
    body = {
        "status": "ready" if ready else "unavailable",
        "answers": answers,
        "dependencies": {
            "policy": f"{policy.id} {policy.version}",
            "database": database,
            "jwt_replay_cache": replay,
            "audit_trail": "recording" if database == "ok" else "not recording",
        },
    }
    return body, 200 if ready else 503


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    body, status = readiness(current_app._get_current_object())  # type: ignore[attr-defined]
    return jsonify(body), status


# -- metrics ----------------------------------------------------------------------------


def metrics_networks(
    allowed: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``CDS_METRICS_ALLOW`` entries (addresses or networks) parsed; ConfigError if one is not."""
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"CDS_METRICS_ALLOW: {entry!r} is not an address or network") from exc
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_addresses() -> list[str]:
    """Every client address a proxy put in ``X-Forwarded-For`` or ``Forwarded``."""
    found = []
    for header in request.headers.getlist("X-Forwarded-For"):
        found += [part for part in header.split(",") if part.strip()]
    for header in request.headers.getlist("Forwarded"):
        for element in header.split(","):
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    found.append(value)
    return found


def metrics_allowed(remote_addr: str | None, networks: Sequence[Any]) -> bool:
    """Whether the caller, and every address a proxy says it forwarded for, is allowed."""
    candidates = [remote_addr or "", *_forwarded_addresses()]
    for text in candidates:
        address = _address(text)
        if address is None or not any(address in network for network in networks):
            return False
    return True


def open_call_metrics(service_ids: Iterable[str]) -> None:
    """Create the call metrics of each service (answered 200) at zero, so a worker's first
    call does not open and map its metric files: Prometheus then also sees each series
    from the start, at zero, rather than from its first increment."""
    for service_id in service_ids:
        metrics().calls.labels(service_id, "hook", "200")
        metrics().call_seconds.labels(service_id, "hook")


def metrics_text() -> bytes:
    """The metrics in Prometheus text format: this process's, or every worker's."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@blueprint.get("/metrics")
def metrics_endpoint() -> Response | tuple[Response, int]:
    from prometheus_client import CONTENT_TYPE_LATEST

    networks = current_app.extensions["cds_metrics_networks"]
    if not metrics_allowed(request.remote_addr, networks):
        outcome = operation_outcome("Metrics are not served to this address", "forbidden")
        return jsonify(outcome), 403
    return Response(metrics_text(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


# -- counting every call ----------------------------------------------------------------


def _call_labels() -> tuple[str, str] | None:
    """``(service, kind)`` of a CDS service or feedback call, else None."""
    from hooks import SERVICES

    rule = request.url_rule.rule if request.url_rule is not None else ""
    if request.method != "POST" or not rule.startswith("/cds-services/<service_id>"):
        return None
    service_id = (request.view_args or {}).get("service_id")
    service = service_id if service_id in SERVICES else "unknown"
    return service, "feedback" if rule.endswith("/feedback") else "hook"


def _start_call() -> None:
    """Time the call, and tag its log lines with the ``hookInstance`` its body names from
    the start (authentication logs before the body is parsed; routes binds the parsed one).

    Only a body of declared length within the size limit is looked at: it is read (and
    kept for the route) as the route would read it; a chunked body is left to the route,
    which answers one it cannot read."""
    g.cds_started = time.perf_counter()
    length = request.content_length
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if _call_labels() is None or length is None or (limit is not None and length > limit):
        return
    if request.headers.get("Transfer-Encoding"):
        return
    found = _HOOK_INSTANCE.search(request.get_data())
    if found is not None:
        bind_hook_instance(found.group(1).decode("ascii"))


def _count_call(response: Response) -> Response:
    labels = _call_labels()
    if labels is not None:
        metrics().calls.labels(*labels, str(response.status_code)).inc()
        started = g.get("cds_started")
        if started is not None:
            metrics().call_seconds.labels(*labels).observe(time.perf_counter() - started)
    return response


def _sweep_when_due(response: Response) -> Response:
    current_app.extensions["cds_retention"].maybe_sweep()
    return response


def install_operations(app: Flask) -> None:
    """Add the health, readiness and metrics routes, count every call, and sweep the audit
    trail past its retention (``cds_service.retention``) in the background."""
    from cds_service.settings import app_settings

    settings = app_settings(app)
    app.extensions["cds_metrics_networks"] = metrics_networks(settings.metrics_allow)
    metrics()
    app.register_blueprint(blueprint)
    app.before_request(_start_call)
    app.after_request(_count_call)
    store = app.extensions["cds_store"]
    if not store.in_memory:  # an in-memory store lives as long as one test or dry run
        sweeper = RetentionSweeper(
            store, settings.audit_retention_days, app.extensions["cds_clock"]
        )
        app.extensions["cds_retention"] = sweeper
        app.after_request(_sweep_when_due)


# -- multi-process metrics under gunicorn -----------------------------------------------


def prepare_multiprocess_metrics() -> Path:
    """Before the app is built for ``serve``: the directory where every worker keeps its
    metrics (``PROMETHEUS_MULTIPROC_DIR`` if set, emptied; else a new temporary one,
    removed when the server exits)."""
    configured = os.environ.get(MULTIPROCESS_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # left by an earlier run: would be summed in
            stale.unlink()
        return directory
    directory = Path(tempfile.mkdtemp(prefix="infusion-pump-cds-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(directory)
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:
            shutil.rmtree(directory, ignore_errors=True)

    import atexit

    atexit.register(remove)
    return directory


def worker_exited(_server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: fold a dead worker's live gauges away."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


# -- logs -------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; ``hookInstance`` on every line of a service call."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            hook_instance = g.get("cds_hook_instance")
            if hook_instance is not None:
                entry["hookInstance"] = hook_instance
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _formatter(log_format: str) -> logging.Formatter:
    return JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT)


def configure_logging(settings: Settings | None = None) -> str:
    """Log at INFO to standard error in the ``CDS_LOG_FORMAT``; return that format."""
    from cds_service.settings import Settings

    log_format = (settings or Settings.load()).log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return log_format


def gunicorn_log_config(log_format: str) -> dict[str, Any]:
    """gunicorn ``logconfig_dict``: its error and access logs in the same format as ours."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonLogFormatter"}
        if log_format == "json"
        else {"format": TEXT_LOG_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"cds": formatter},
        "handlers": {
            "error": {
                "class": "logging.StreamHandler",
                "formatter": "cds",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "cds",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
        "root": {"level": "INFO", "handlers": ["error"]},
    }
