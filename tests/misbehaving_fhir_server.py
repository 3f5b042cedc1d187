"""A local HTTP server that plays a FHIR server behaving well or badly, for fault tests.

The first path segment picks the behaviour for everything under it, so one server offers
many ``fhirServer`` base URLs: ``http://127.0.0.1:PORT/<behaviour>/fhir``. Behaviours:

    ok          a Patient for reads, an empty searchset Bundle for searches
    slow        answers only after ``slow_s`` seconds (or when the server stops)
    status-NNN  HTTP NNN with an OperationOutcome (401, 403, 404, 500, ...)
    garbage     HTTP 200 with a body that is not JSON
    outcome     HTTP 200 with an OperationOutcome
    null        HTTP 200 with ``null``
    paged       three searchset pages of one Condition each (an absolute, then a relative
                ``next`` link)
    endless     searchset pages whose ``next`` link never ends
    offsite     a searchset page whose ``next`` link points at another server
    redirect    302 to ``redirect_to`` (another server)
    huge        HTTP 200 streaming far more bytes than any cap, without Content-Length
    huge-declared  a Content-Length of 2 GB and a short body
    trickle     HTTP 200 sending one byte every 0.1 s, for ever

Every request is recorded (path, Authorization header) in ``requests_seen``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class SeenRequest:
    path: str
    authorization: str | None


class _ListeningServer(ThreadingHTTPServer):
    """Accepts a call's queries connecting all at once, as a production server does
    (``http.server`` listens with a backlog of 5: a burst of connections beyond it waits a
    second for a SYN retransmission)."""

    request_queue_size = 128


@dataclass
class MisbehavingFhirServer:
    """The server, its recorded requests, and the knobs of its behaviours."""

    slow_s: float = 30.0
    redirect_to: str = "http://127.0.0.1:9/"
    requests_seen: list[SeenRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def base(self, behaviour: str) -> str:
        return f"{self.origin}/{behaviour}/fhir"

    def start(self) -> MisbehavingFhirServer:
        server = _ListeningServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MisbehavingFhirServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _patient(resource_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": resource_id,
        "gender": "female",
        "birthDate": "1950-01-01",
    }


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": text}],
    }


def _handler_for(owner: MisbehavingFhirServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            """Quiet: tests read ``requests_seen`` instead."""

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            owner.requests_seen.append(SeenRequest(self.path, self.headers.get("Authorization")))
            parts = urlsplit(self.path)
            segments = [s for s in parts.path.split("/") if s]
            behaviour = segments[0] if segments else "ok"
            rest = segments[2:] if len(segments) > 2 else []
            try:
                self._behave(behaviour, rest, parse_qs(parts.query))
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self.close_connection = True

        def _behave(self, behaviour: str, rest: list[str], query: dict[str, list[str]]) -> None:
            base = f"{owner.origin}/{behaviour}/fhir"
            is_read = len(rest) == 2
            if behaviour == "ok":
                if is_read:
                    self._send_json(
                        200,
                        _patient(rest[1])
                        if rest[0] == "Patient"
                        else {"resourceType": rest[0], "id": rest[1]},
                    )
                else:
                    self._send_json(
                        200, {"resourceType": "Bundle", "type": "searchset", "total": 0}
                    )
            elif behaviour == "slow":
                owner.stopping.wait(owner.slow_s)
                self._send_json(200, {"resourceType": "Bundle", "type": "searchset", "total": 0})
            elif behaviour.startswith("status-"):
                self._send_json(int(behaviour.removeprefix("status-")), _outcome(behaviour))
            elif behaviour == "garbage":
                body = b"<html><body>Service Unavailable</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif behaviour == "outcome":
                self._send_json(200, _outcome("search failed"))
            elif behaviour == "null":
                self._send_json(200, None)
            elif behaviour == "paged":
                page = int(query.get("page", ["0"])[0])
                links = []
                if page == 0:
                    links = [{"relation": "next", "url": f"{base}/Condition?page=1"}]
                elif page == 1:
                    links = [{"relation": "next", "url": "Condition?page=2"}]
                self._send_json(
                    200,
                    {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "total": 3,
                        "link": links,
                        "entry": [{"resource": {"resourceType": "Condition", "id": f"c{page}"}}],
                    },
                )
            elif behaviour in ("endless", "offsite"):
                page = int(query.get("page", ["0"])[0])
                next_url = (
                    f"{base}/{'/'.join(rest) or 'Condition'}?page={page + 1}"
                    if behaviour == "endless"
                    else "http://127.0.0.2:9/fhir/Condition?p=2"
                )
                self._send_json(
                    200,
                    {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "link": [{"relation": "next", "url": next_url}],
                        "entry": [{"resource": {"resourceType": "Condition", "id": f"c{page}"}}],
                    },
                )
            elif behaviour == "redirect":
                self.send_response(302)
                self.send_header("Location", owner.redirect_to + "/".join(rest))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif behaviour == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk = b"[" + b"0," * 32767 + b"0]"
                for _ in range(4096):  # 256 MiB at most, far past any cap
                    if owner.stopping.is_set():
                        break
                    self.wfile.write(chunk)
            elif behaviour == "huge-declared":
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(2 * 1024**3))
                self.end_headers()
                self.close_connection = True
                self.wfile.write(b"{")
            elif behaviour == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                while not owner.stopping.wait(0.1):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            else:
                self._send_json(404, _outcome("unknown behaviour"))

    return Handler
