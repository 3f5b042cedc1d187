"""``serve``'s own answers: errors of the HTTP server and of reading the body, as the
client sees them over real HTTP (``serve`` on loopback), and the pieces behind them."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.http import errors as http_errors

from cds_service.config import DEFAULTS, ConfigError
from cds_service.serving import BufferedRequestBody, server_error_response, serving_options
from cds_service.settings import Settings
from tests.conftest import ORDER_SIGN
from tests.served_process import ServedProcess

TOKEN = "eyJ" + "a" * (1024 * 1024)  # a 1 MB bearer token


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    """``serve`` with one worker and the production defaults (authentication required)."""
    folder = tmp_path_factory.mktemp("serving")
    server = ServedProcess(
        {"CDS_DATABASE_URL": f"sqlite:///{folder / 'audit.sqlite3'}"},
        workers=1,
        log_path=folder / "serve.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as is; the status, headers (lower-cased names) and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        # The server may answer and close before reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(raw)
        answer = b""
        try:
            while piece := connection.recv(65536):
                answer += piece
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _outcome(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].split(";")[0] in ("application/json", "application/fhir+json")
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    return outcome  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(
            b"GET /cds-services?q=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            414,
            "too-long",
            id="request line too long",
        ),
        pytest.param(
            f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 2\r\n\r\n{}".encode(),
            431,
            "too-long",
            id="1 MB bearer token",
        ),
        pytest.param(
            b"GET /cds-services HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "too-long",
            id="too many header fields",
        ),
        pytest.param(
            b"GET /cds-services HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
            400,
            "invalid",
            id="header line without a colon",
        ),
        pytest.param(
            f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: a\r\nContent-Length: two\r\n\r\n{{}}".encode(),
            400,
            "invalid",
            id="Content-Length not a number",
        ),
        pytest.param(
            b"GET /fhir/metadata HTTP/9.9\r\nHost: a\r\n\r\n",
            400,
            "invalid",
            id="unknown HTTP version",
        ),
        pytest.param(b"G@T /cds-services HTTP/1.1\r\n\r\n", 400, "invalid", id="bad method"),
        pytest.param(
            b"GET /auth/token HTTP/1.1\r\nHost: a\r\nX-\x01Bad: 1\r\n\r\n",
            400,
            "invalid",
            id="control character in a header name",
        ),
        pytest.param(
            f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: bogus, chunked\r\n\r\n"
            "0\r\n\r\n".encode(),
            501,
            "not-supported",
            id="transfer coding not supported",
        ),
    ],
)
def test_errors_of_the_http_server_are_operation_outcomes(
    served: ServedProcess, raw: bytes, status: int, code: str
) -> None:
    answer_status, headers, body = _exchange(served.port, raw)
    assert answer_status == status
    outcome = _outcome(headers, body)
    assert outcome["issue"][0]["code"] == code
    assert b"aaaaaaaa" not in body  # never echoes what was sent (a token, a header)
    assert b"Traceback" not in body
    assert b"gunicorn" not in body.lower()


def test_an_error_on_a_page_for_people_is_an_html_page(served: ServedProcess) -> None:
    status, headers, body = _exchange(
        served.port,
        b"GET /dtr/launch?iss=x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2"
        b"\r\n\r\n",
    )
    assert status == 400
    assert headers["content-type"].startswith("text/html")
    assert b"<h1>Bad Request</h1>" in body


def test_application_errors_over_http_stay_operation_outcomes(served: ServedProcess) -> None:
    # Past the HTTP server, the app's own answers: unknown path, wrong method, no token.
    for raw, status in [
        (b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404),
        (b"DELETE /cds-services HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405),
        (
            f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {TOKEN[:4000]}\r\n"
            "Content-Length: 2\r\n\r\n{}".encode(),
            401,
        ),
    ]:
        answer_status, headers, body = _exchange(served.port, raw)
        assert answer_status == status
        _outcome(headers, body)
        assert b"aaaaaaaa" not in body


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (http_errors.LimitRequestLine(9000, 8190), 414),
        (http_errors.LimitRequestHeaders("limit request headers fields size"), 431),
        (http_errors.InvalidHeader("Authorization: Bearer secret-token"), 400),
        (http_errors.InvalidHeaderName("X-secret-token"), 400),
        (http_errors.InvalidRequestLine("GET /secret-token"), 400),
        (http_errors.InvalidChunkSize(b"secret-token"), 400),
        (http_errors.UnsupportedTransferCoding("secret-token"), 501),
        (RuntimeError("secret-token in a stack"), 500),
    ],
)
def test_server_error_answers_never_echo_the_request(exc: BaseException, status: int) -> None:
    answer_status, response = server_error_response(exc)
    assert answer_status == status
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in response
    assert b"secret-token" not in response
    outcome = json.loads(response.partition(b"\r\n\r\n")[2])
    assert outcome["resourceType"] == "OperationOutcome"


def _call(middleware: BufferedRequestBody, environ: dict[str, Any]) -> tuple[str, bytes]:
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = status

    body = b"".join(middleware(environ, start_response))
    return seen["status"], body


def _echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"] or 0))
    start_response("200 OK", [])
    return [body]


@pytest.mark.parametrize(
    ("environ", "status"),
    [
        ({"CONTENT_LENGTH": "5", "wsgi.input": io.BytesIO(b"hello")}, "200 OK"),
        ({"CONTENT_LENGTH": "", "wsgi.input": io.BytesIO(b"")}, "200 OK"),
        ({"CONTENT_LENGTH": "11", "wsgi.input": io.BytesIO(b"x" * 11)}, "413 "),
        ({"CONTENT_LENGTH": "9", "wsgi.input": io.BytesIO(b"short")}, "400 "),
        ({"CONTENT_LENGTH": "-x", "wsgi.input": io.BytesIO(b"")}, "400 "),
        (
            {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b"x" * 11)},
            "413 ",
        ),
        (
            {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b"chunk")},
            "200 OK",
        ),
    ],
)
def test_the_body_is_read_whole_before_the_app_runs(environ: dict[str, Any], status: str) -> None:
    middleware = BufferedRequestBody(_echo, deadline_s=5, max_bytes=10)
    answer_status, body = _call(middleware, {"PATH_INFO": "/cds-services", **environ})
    assert answer_status.startswith(status)
    if status != "200 OK":
        assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_the_worker_warms_up_before_it_answers(served: ServedProcess) -> None:
    """The worker decided the built-in call at boot; it failed nowhere."""
    assert served.log_path is not None
    log = served.log_path.read_text(errors="replace")
    assert "worker warmed up in" in log
    assert "warm-up failed" not in log


def test_serving_options_follow_the_settings() -> None:
    settings = Settings.load({}, environ={"CDS_MAX_CONNECTIONS": "2000", "CDS_KEEPALIVE_S": "3"})
    options = serving_options(settings, host="127.0.0.1", port=8080, workers=2)
    assert options["worker_connections"] == 2000
    assert options["keepalive"] == 3
    assert options["preload_app"] is True
    assert options["worker_class"] == "cds_service.serving.ServiceWorker"
    assert DEFAULTS["REQUEST_READ_TIMEOUT_S"] == 10.0


def test_a_read_deadline_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        Settings.load({}, environ={"CDS_REQUEST_READ_TIMEOUT_S": "0"})
