"""Production serving (``infusion-pump-cds serve``): gunicorn, gevent workers, the app built
once before the workers are forked.

Why gevent workers. A sync worker (or a thread of a threaded worker) is held by a
connection for as long as the client takes to send its request: a hundred clients that
send their headers and then trickle the body hold a hundred workers or threads, and
nothing else is answered. A gevent worker holds a connection with a greenlet, which costs
a few kilobytes and no thread, so thousands of slow or idle connections wait side by side
while the worker goes on answering the clients that have sent their request. What a
greenlet cannot bound is *time*, so every phase of a request has a deadline:

- request line and headers (and the wait for the next request on a kept-alive
  connection): ``CDS_KEEPALIVE_S``; past it the connection is closed;
- the body: ``CDS_REQUEST_READ_TIMEOUT_S`` for the whole body, however it trickles; past
  it the answer is 408 with an OperationOutcome and the connection is closed. The body
  is read in full before the application sees the request (``BufferedRequestBody``), so
  no route can be held up by a slow sender;
- the application: gunicorn's worker ``timeout`` (a worker that stops reporting is
  replaced).

Each worker holds at most ``CDS_MAX_CONNECTIONS`` connections (the open-file limit is
raised to fit them). Decisions are CPU work of a few milliseconds, answered one at a
time per worker; the FHIR queries and database writes of one request wait cooperatively
(psycopg 3 and ``requests`` work under gevent's patched sockets), so a slow EHR FHIR
server does not stop the worker either. In production a buffering reverse proxy sits in
front as well (``deploy/nginx.conf``); ``serve`` is safe without one.

Errors the HTTP server itself answers (a request line or header too long, malformed
headers, a bad chunked encoding) are OperationOutcomes too (``ServiceWorker``), except
on pages meant for people (``cds_service.error_pages``), which get an HTML page when the
server got as far as reading the path; when it did not (a request line or header block
too long), the answer is an OperationOutcome, what every API client expects.

gevent must patch the standard library before anything creates sockets, locks or SSL
contexts, and the app is built in the master process before the fork (so the workers
share its loaded policy and modules); ``patch_for_cooperative_io`` is therefore the
first thing ``serve`` does.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import resource
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker

from cds_service.error_pages import error_page, is_people_page

if TYPE_CHECKING:
    from flask import Flask

    from cds_service.settings import Settings

logger = logging.getLogger(__name__)

# Connections beyond those of the workers: listening sockets, logs, the database pool.
_SPARE_FILES = 256
_BODY_CHUNK = 64 * 1024

StartResponse = Callable[..., Any]


def patch_for_cooperative_io() -> None:
    """Make blocking I/O of the standard library cooperative (gevent); call it before
    the service's modules are imported."""
    from gevent import monkey

    monkey.patch_all()


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's soft open-file limit to ``needed`` (at most the hard limit);
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def _answer(
    environ: Mapping[str, Any],
    start_response: StartResponse,
    status: str,
    diagnostics: str,
    code: str,
) -> Iterable[bytes]:
    """An OperationOutcome (an HTML page on pages meant for people); the connection closes."""
    if is_people_page(environ.get("PATH_INFO")):
        content_type = "text/html; charset=utf-8"
        reason = status.partition(" ")[2]
        body = error_page(reason, diagnostics).encode()
    else:
        content_type = "application/fhir+json"
        body = json.dumps(_outcome(diagnostics, code)).encode()
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    return [body]


def _outcome(diagnostics: str, code: str) -> dict[str, Any]:
    from cds_service.errors import operation_outcome

    return operation_outcome(diagnostics, code)


class _BodyTimedOut(Exception):
    """The body did not arrive within the deadline."""


class BufferedRequestBody:
    """WSGI middleware: a request's whole body is read, under one deadline, before the
    application sees the request.

    A client slower than ``deadline_s`` gets 408, one that announces or sends more than
    ``max_bytes`` gets 413, and a body the HTTP layer cannot read (a malformed chunked
    encoding, a connection closed early) gets 400; each an OperationOutcome, and the
    connection is closed. The deadline interrupts a read blocked in the middle of the
    body, so it needs cooperative sockets (gevent); elsewhere the body is read without one.
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], *, deadline_s: float, max_bytes: int
    ) -> None:
        self.app = app
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            announced = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _answer(
                environ, start_response, "400 Bad Request", "Invalid Content-Length", "invalid"
            )
        if not chunked and announced <= 0:
            return self.app(environ, start_response)
        if announced > self.max_bytes:
            self._stop_reading(environ)
            return self._too_large(environ, start_response)
        try:
            body = self._read(environ["wsgi.input"])
        except _BodyTimedOut:
            self._stop_reading(environ)
            logger.info("request body not received within %s s: 408", self.deadline_s)
            return _answer(
                environ,
                start_response,
                "408 Request Timeout",
                f"The request body did not arrive within {self.deadline_s:g} seconds",
                "timeout",
            )
        except (http_errors.ParseException, OSError, ValueError):
            # Raised while reading: a malformed chunked encoding, or a body cut short.
            self._stop_reading(environ)
            return _answer(
                environ,
                start_response,
                "400 Bad Request",
                "The request body could not be read: its transfer encoding is malformed"
                " or it ended early",
                "invalid",
            )
        if len(body) > self.max_bytes:
            self._stop_reading(environ)
            return self._too_large(environ, start_response)
        if not chunked and len(body) < announced:
            return _answer(
                environ,
                start_response,
                "400 Bad Request",
                "The request body could not be read: it ended before its Content-Length",
                "invalid",
            )
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        return self.app(environ, start_response)

    def _too_large(
        self, environ: Mapping[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        self._stop_reading(environ)
        return _answer(
            environ,
            start_response,
            "413 Request Entity Too Large",
            f"The request body is larger than {self.max_bytes} bytes",
            "too-costly",
        )

    def _read(self, stream: Any) -> bytes:
        deadline = _deadline(self.deadline_s)
        parts: list[bytes] = []
        size = 0
        with deadline:
            while size <= self.max_bytes:
                piece = stream.read(_BODY_CHUNK)
                if not piece:
                    break
                parts.append(piece)
                size += len(piece)
        return b"".join(parts)

    @staticmethod
    def _stop_reading(environ: Mapping[str, Any]) -> None:
        """Close the read side: the rest of the body is not waited for."""
        connection = environ.get("gunicorn.socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)


class _NoDeadline:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _deadline(seconds: float) -> Any:
    """A context raising ``_BodyTimedOut`` after ``seconds`` under gevent, else nothing."""
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return _NoDeadline()
    if not monkey.is_module_patched("socket"):
        return _NoDeadline()
    return Timeout(seconds, _BodyTimedOut)


def serving_options(settings: Settings, *, host: str, port: int, workers: int) -> dict[str, Any]:
    """The gunicorn settings ``serve`` runs with."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "cds_service.serving.ServiceWorker",
        "worker_connections": settings.max_connections,
        "keepalive": settings.keepalive_s,
        "timeout": 30,
        "graceful_timeout": 20,
        "preload_app": True,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,
        "accesslog": "-",
        # Several services may run on one host: no gunicorn control socket in $HOME.
        "control_socket_disable": True,
    }


def run(app: Flask, settings: Settings, options: Mapping[str, Any]) -> None:
    """Serve ``app`` (already built) with gunicorn until stopped."""
    from gunicorn.app.base import BaseApplication

    app.wsgi_app = BufferedRequestBody(  # type: ignore[method-assign]
        app.wsgi_app,
        deadline_s=settings.request_read_timeout_s,
        max_bytes=settings.max_request_bytes,
    )
    raise_open_file_limit(int(options["worker_connections"]) + _SPARE_FILES)
    # Everything loaded so far lives as long as the process: out of the garbage
    # collector's reach, so a worker's collections do not write to (and so copy) the
    # pages it shares with the master.
    gc.freeze()

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Server().run()


def _server_error_answer(exc: BaseException) -> tuple[int, str, str, str]:
    """Status, reason, OperationOutcome code and diagnostics for an error the HTTP
    server met reading a request. Never echoes what the client sent (it may be a token)."""
    e = http_errors
    if isinstance(exc, e.LimitRequestLine):
        return 414, "URI Too Long", "too-long", "The request line is too long"
    if isinstance(exc, e.LimitRequestHeaders):
        return (
            431,
            "Request Header Fields Too Large",
            "too-long",
            "A request header field is too large, or there are too many header fields",
        )
    if isinstance(exc, e.UnsupportedTransferCoding):
        return 501, "Not Implemented", "not-supported", "The transfer coding is not supported"
    if isinstance(exc, e.ExpectationFailed):
        return 417, "Expectation Failed", "not-supported", "The Expect header is not supported"
    if isinstance(exc, e.InvalidChunkSize | e.ChunkMissingTerminator | e.InvalidChunkExtension):
        return 400, "Bad Request", "invalid", "The chunked request body is malformed"
    if isinstance(exc, e.InvalidRequestLine | e.InvalidRequestMethod | e.InvalidHTTPVersion):
        return 400, "Bad Request", "invalid", "The request line is malformed"
    if isinstance(exc, e.ParseException) and not isinstance(exc, e.ConfigurationProblem):
        return 400, "Bad Request", "invalid", "The request headers are malformed"
    return (
        500,
        "Internal Server Error",
        "exception",
        "Internal error; the request was not processed",
    )


def server_error_response(exc: BaseException, path: str | None = None) -> tuple[int, bytes]:
    """The status and the complete HTTP response for an error the HTTP server met:
    an OperationOutcome, or an HTML page when ``path`` (if it could be read) is a page
    meant for people."""
    status, reason, code, diagnostics = _server_error_answer(exc)
    if is_people_page(path):
        content_type = "text/html; charset=utf-8"
        body = error_page(reason, diagnostics).encode()
    else:
        content_type = "application/fhir+json"
        body = json.dumps(_outcome(diagnostics, code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return status, head.encode("latin-1") + body


class ServiceWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker answering the HTTP server's own errors as OperationOutcomes."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # Only some parse errors know the request they were reading (and so its path).
        known = req if req is not None else getattr(exc, "req", None)
        status, response = server_error_response(exc, getattr(known, "path", None))
        peer = addr[0] if addr else ""
        if status >= 500:
            self.log.exception("Error handling request (peer %s)", peer)
        else:
            self.log.warning("Invalid request from %s: %s (%d)", peer, type(exc).__name__, status)
        try:
            util.write_nonblock(client, response)
        except Exception:  # noqa: BLE001 - the client may be gone
            self.log.debug("Failed to send error message.")
