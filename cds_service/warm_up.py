"""A worker's warm-up: one built-in call decided inside each freshly forked worker before
it accepts connections, so that its first real call costs what any other does.

``serve`` loads everything once before the fork (``cds_service.app.preload``): modules,
FHIR models, schema validators, the compiled audit statements. A forked worker shares
those pages with the master until it first writes to them, and Python writes to every
object it touches (reference counts): the first call in a new worker would copy
thousands of pages and open its database connection, at three to four times the cost
of the next call. The warm-up pays that at boot instead: it decides
``warm_up_request.json`` (an order-sign call with its whole prefetch and no
``fhirServer``, so nothing is fetched) through the same steps as a service call, builds
its response, and writes its audit record in a transaction that is rolled back (on
PostgreSQL it only opens the worker's connection) followed, on SQLite, by a commit
that changes nothing (a process's first commit starts its write-ahead log). It also
creates the call metrics of every service at zero (opening the worker's metric files)
and reads the discovery document through the whole WSGI application. Nothing is
answered, recorded, counted or logged, and a warm-up that fails only leaves the work to
the first call. What is left of a first call's extra cost on an idle machine is the
machine's own: a warm worker's call after a second idle costs about as much.

The master decides the same call a few times before it forks (``warm_up_master``): what a
call builds lazily (caches, compiled statements) and the interpreter's specialised
bytecode then exist once, in pages every worker shares, instead of being built and
written in each worker (about 2 MB less private memory per worker). The master's
database connections are closed again so that no worker inherits one.
"""

from __future__ import annotations

import logging
import time
from importlib import resources

from flask import Flask, request

logger = logging.getLogger(__name__)

WARM_UP_SERVICE = "infusion-pump-coverage-order-sign"


def warm_up_request() -> bytes:
    """The body of the built-in call."""
    return resources.files("cds_service").joinpath("warm_up_request.json").read_bytes()


# Enough calls for the interpreter to specialise the bytecode the decision path runs.
MASTER_WARM_UP_CALLS = 10


def warm_up_worker(app: Flask) -> None:
    """Decide the built-in call in this process without answering or recording it."""
    from cds_service.operations import open_call_metrics
    from hooks import SERVICES

    started = time.perf_counter()
    open_call_metrics(SERVICES)
    _read_discovery(app)
    if _decide_built_in_call(app, "worker"):
        logger.info("worker warmed up in %.0f ms", (time.perf_counter() - started) * 1000)


def warm_up_master(app: Flask, calls: int = MASTER_WARM_UP_CALLS) -> None:
    """Before the fork: decide the built-in call ``calls`` times, then close the database
    connections the rehearsed audit write opened."""
    started = time.perf_counter()
    for _ in range(calls):
        if not _decide_built_in_call(app, "master"):
            break
    store = app.extensions["cds_store"]
    if not store.in_memory:  # an in-memory database lives only in its connection
        store.dispose()
    logger.info("master warmed up in %.0f ms", (time.perf_counter() - started) * 1000)


def _read_discovery(app: Flask) -> None:
    """GET the discovery document through the whole WSGI application (request parsing,
    every before- and after-request step, the JSON response), which records and counts
    nothing."""
    try:
        app.test_client().get("/cds-services")
    except Exception as exc:  # noqa: BLE001 - a server starts whatever its warm-up meets
        logger.warning("worker warm-up: discovery failed (%s)", type(exc).__name__)


def _decide_built_in_call(app: Flask, where: str) -> bool:
    """Whether the built-in call was decided, its response built and its audit write
    rehearsed (rolled back)."""
    from cds_service.envelope import parse_json_body
    from cds_service.routes import answer_call
    from hooks import SERVICES

    service = SERVICES[WARM_UP_SERVICE]
    body = warm_up_request()
    try:
        with app.test_request_context(
            f"/cds-services/{service.id}",
            method="POST",
            data=body,
            content_type="application/json",
        ):
            answered = answer_call(
                service, parse_json_body(request.get_data()), None, time.perf_counter()
            )
            app.json.dumps(answered.result.response)
        app.extensions["cds_store"].warm_up(answered.record)
    except Exception as exc:  # noqa: BLE001 - a server starts whatever its warm-up meets
        logger.warning(
            "%s warm-up failed (%s); its first call loads what it needs", where, type(exc).__name__
        )
        return False
    return True
