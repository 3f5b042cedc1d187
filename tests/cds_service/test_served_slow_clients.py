"""Slow and idle clients against ``infusion-pump-cds serve`` (one worker process, loopback).

Many clients send their headers and then trickle the body, or trickle the headers, or
hold kept-alive connections open doing nothing; meanwhile ordinary requests must still
be answered within a second, and each slow client is cut off at its deadline with an
OperationOutcome. Counts and times are bounded (a few seconds in all); ``CDS_SLOW_CLIENTS``
and ``CDS_IDLE_CLIENTS`` raise the counts for a longer probe.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.builders import order_sign_request
from tests.conftest import FIXTURES, ORDER_SIGN
from tests.misbehaving_fhir_server import MisbehavingFhirServer
from tests.served_process import ServedProcess, raise_test_open_file_limit

SLOW_BODY_CLIENTS = int(os.environ.get("CDS_SLOW_CLIENTS", "100"))
SLOW_HEADER_CLIENTS = 20
IDLE_CLIENTS = int(os.environ.get("CDS_IDLE_CLIENTS", "200"))
READ_TIMEOUT_S = 6
KEEPALIVE_S = 4
PROBE_WINDOW_S = 3.0
FHIR_DEADLINE_S = 2.0
SIGN_BODY = (FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json").read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    """``serve`` with one worker, unsigned calls accepted, short read deadlines."""
    raise_test_open_file_limit(SLOW_BODY_CLIENTS + SLOW_HEADER_CLIENTS + IDLE_CLIENTS + 256)
    folder = tmp_path_factory.mktemp("slow-clients")
    server = ServedProcess(
        {
            "CDS_AUTH": "optional",
            "CDS_DATABASE_URL": f"sqlite:///{folder / 'audit.sqlite3'}",
            "CDS_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
            "CDS_KEEPALIVE_S": str(KEEPALIVE_S),
            "CDS_RATE_LIMIT_PER_S": "0",  # the probes call from one address, fast
            "CDS_FHIR_SERVERS": "http://127.0.0.1",
            "CDS_FHIR_DEADLINE_S": str(FHIR_DEADLINE_S),
            "CDS_FHIR_CALL_TIMEOUT_S": str(FHIR_DEADLINE_S),
        },
        workers=1,
        log_path=folder / "serve.log",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=15)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _read_answer(connection: socket.socket) -> bytes:
    answer = b""
    try:
        while piece := connection.recv(65536):
            answer += piece
    except (ConnectionResetError, TimeoutError):
        pass
    return answer


def _read_one_response(connection: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) off a kept-alive connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head


class _Trickler(threading.Thread):
    """Sends one byte to each of its connections every half second until stopped."""

    def __init__(self, connections: list[socket.socket], payload: bytes) -> None:
        super().__init__(daemon=True)
        self.connections = connections
        self.payload = payload
        self.stopped = threading.Event()

    def run(self) -> None:
        position = 0
        while not self.stopped.wait(0.5):
            byte = self.payload[position % len(self.payload) : position % len(self.payload) + 1]
            position += 1
            for connection in self.connections:
                try:
                    connection.send(byte)
                except OSError:
                    continue


def test_ordinary_requests_are_answered_within_a_second_among_slow_and_idle_clients(
    served: ServedProcess,
) -> None:
    port = served.port
    slow_bodies: list[socket.socket] = []
    slow_headers: list[socket.socket] = []
    idle: list[socket.socket] = []
    try:
        _slow_and_idle_clients_leave_ordinary_requests_answered(
            port, served.base, slow_bodies, slow_headers, idle
        )
    finally:
        for connection in slow_bodies + slow_headers + idle:
            connection.close()


def _slow_and_idle_clients_leave_ordinary_requests_answered(
    port: int,
    base: str,
    slow_bodies: list[socket.socket],
    slow_headers: list[socket.socket],
    idle: list[socket.socket],
) -> None:
    head = (
        f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(SIGN_BODY)}\r\n\r\n"
    ).encode()
    for _ in range(SLOW_BODY_CLIENTS):
        connection = _connect(port)
        connection.sendall(head + SIGN_BODY[:1])
        slow_bodies.append(connection)
    for _ in range(SLOW_HEADER_CLIENTS):
        connection = _connect(port)
        connection.sendall(f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        slow_headers.append(connection)
    for _ in range(IDLE_CLIENTS):
        connection = _connect(port)
        connection.sendall(b"GET /cds-services HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_one_response(connection).startswith(b"HTTP/1.1 200")
        idle.append(connection)  # kept alive, sends nothing more
    tricklers = [_Trickler(slow_bodies, SIGN_BODY[1:]), _Trickler(slow_headers, b"X-Slow: 1")]
    for trickler in tricklers:
        trickler.start()
    connected_at = time.monotonic()

    latencies = []
    with requests.Session() as session:
        while time.monotonic() - connected_at < PROBE_WINDOW_S:
            started = time.perf_counter()
            discovery = session.get(f"{base}/cds-services", timeout=5)
            decided = session.post(
                f"{base}{ORDER_SIGN}",
                data=SIGN_BODY,
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
            latencies.append(time.perf_counter() - started)
            assert discovery.status_code == 200
            assert decided.status_code == 200
            assert decided.json()["systemActions"]
    print(
        f"\n{SLOW_BODY_CLIENTS} slow bodies, {SLOW_HEADER_CLIENTS} slow headers, {IDLE_CLIENTS}"
        f" idle: {len(latencies)} probes (discovery + order-sign), max"
        f" {max(latencies) * 1000:.0f} ms, median {statistics.median(latencies) * 1000:.0f} ms"
    )
    assert len(latencies) >= 3
    assert max(latencies) < 1.0

    # Each slow body is cut off at its deadline with a 408 OperationOutcome ...
    answers = [_read_answer(connection) for connection in slow_bodies]
    cut_at = time.monotonic() - connected_at
    for trickler in tricklers:
        trickler.stopped.set()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
    outcome = json.loads(answers[0].partition(b"\r\n\r\n")[2])
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "timeout"
    assert cut_at < READ_TIMEOUT_S + 5
    # ... and slow headers and idle connections are closed after the keep-alive time.
    for connection in slow_headers + idle:
        assert _read_answer(connection) == b""


def test_a_body_larger_than_the_limit_is_refused_before_it_is_read(
    served: ServedProcess, tmp_path: Path
) -> None:
    connection = _connect(served.port)
    connection.sendall(
        f"POST {ORDER_SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n{{".encode()
    )
    answer = _read_answer(connection)
    connection.close()
    assert answer.startswith(b"HTTP/1.1 413")
    outcome = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert outcome["issue"][0]["code"] == "too-costly"


def test_calls_waiting_on_a_slow_fhir_server_do_not_hold_the_worker(
    served: ServedProcess,
) -> None:
    """Calls whose prefetch must be fetched from an EHR FHIR server that does not answer
    wait out their deadline side by side, while other calls are answered."""
    with MisbehavingFhirServer(slow_s=30).start() as fhir:
        body = json.dumps(order_sign_request("pat-1", fhir_server=fhir.base("slow"))).encode()
        waiting: list[tuple[int, float]] = []

        def call_waiting_on_fhir() -> None:
            started = time.perf_counter()
            response = requests.post(
                f"{served.base}{ORDER_SIGN}",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=15,
            )
            waiting.append((response.status_code, time.perf_counter() - started))

        callers = [threading.Thread(target=call_waiting_on_fhir) for _ in range(10)]
        for caller in callers:
            caller.start()
        time.sleep(0.3)
        latencies = []
        with requests.Session() as session:
            for _ in range(10):
                started = time.perf_counter()
                decided = session.post(
                    f"{served.base}{ORDER_SIGN}",
                    data=SIGN_BODY,
                    headers={"Content-Type": "application/json"},
                    timeout=5,
                )
                latencies.append(time.perf_counter() - started)
                assert decided.status_code == 200
        for caller in callers:
            caller.join()
    print(
        f"\n10 calls waiting on a FHIR server that does not answer: their answers after"
        f" {min(t for _, t in waiting):.1f}-{max(t for _, t in waiting):.1f} s; 10 other calls"
        f" meanwhile, max {max(latencies) * 1000:.0f} ms"
    )
    assert max(latencies) < 1.0
    assert len(waiting) == 10
    assert all(status in (200, 412) for status, _ in waiting)
    assert all(elapsed < FHIR_DEADLINE_S + 2 for _, elapsed in waiting)
