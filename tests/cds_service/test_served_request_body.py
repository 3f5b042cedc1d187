"""Request bodies as the HTTP server hands them over: ``infusion-pump-cds serve`` on loopback.

The Flask test client never produces a malformed chunked encoding; a real client can.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import FIXTURES, ORDER_SIGN
from tests.served_process import ServedProcess

SIGN_FIXTURE = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under ``serve`` (one worker, unsigned calls accepted); its base URL."""
    database = tmp_path_factory.mktemp("served") / "audit.sqlite3"
    env = {"CDS_AUTH": "optional", "CDS_DATABASE_URL": f"sqlite:///{database}"}
    process = ServedProcess(env, workers=1).start()
    try:
        yield process.base
    finally:
        process.stop()


def _raw_post(base: str, path: str, chunked_body: bytes) -> tuple[int, bytes]:
    """POST a chunked body exactly as given; the status and the response body."""
    port = int(base.rsplit(":", 1)[1])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + chunked_body)
        connection.shutdown(socket.SHUT_WR)  # the client has sent all it will send
        answer = b""
        while piece := connection.recv(65536):
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("path", [ORDER_SIGN, f"{ORDER_SIGN}/feedback"])
@pytest.mark.parametrize(
    "chunked_body",
    [
        b"ZZ\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
        b"2\r\n{}XX0\r\n\r\n",  # a chunk without its CRLF terminator
        b"A\r\n{}",  # a chunk that ends before its size
    ],
)
def test_a_malformed_chunked_body_is_a_400_operation_outcome(
    served: str, path: str, chunked_body: bytes
) -> None:
    status, body = _raw_post(served, path, chunked_body)
    assert status == 400
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "could not be read" in outcome["issue"][0]["diagnostics"]


def test_a_well_formed_chunked_request_is_decided(served: str) -> None:
    data = Path(SIGN_FIXTURE).read_bytes()
    status, body = _raw_post(
        served, ORDER_SIGN, _chunk(data[:100]) + _chunk(data[100:]) + b"0\r\n\r\n"
    )
    assert status == 200
    assert json.loads(body)["systemActions"]


def test_an_overlong_integer_over_http_is_a_400_operation_outcome(served: str) -> None:
    body = '{"hook": "order-sign", "n": ' + "1" * 5000 + "}"
    response = requests.post(
        f"{served}{ORDER_SIGN}", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
