"""Latency of an order-sign call whose prefetch the service must fetch itself.

Starts a local FHIR server that answers every query after a fixed delay (200 ms by
default), then times order-sign calls (in-process, through the Flask app) that leave
N of the service's prefetch keys unsent: with parallel queries the latency should stay
near one round trip whatever N is, not N round trips.

    .venv/bin/python bench/bench_prefetch_fallback.py [--delay-ms 200] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cds_service import create_app  # noqa: E402
from cds_service.fhir_client import close_shared_session  # noqa: E402
from hooks import SERVICES  # noqa: E402

SERVICE = SERVICES["infusion-pump-coverage-order-sign"]
PATIENT_ID = "bench-patient"


def start_delayed_fhir_server(delay_s: float) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A FHIR server on loopback answering each read or search after ``delay_s``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Like a real FHIR server: no Nagle delay, and each answer sent in one write (a
        # header write followed by a body write stalls ~40 ms on delayed ACKs otherwise).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet."""

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(delay_s)
            path = self.path.split("?")[0].split("/")
            resource_type = path[2] if len(path) > 2 else ""
            if len(path) == 4:  # a read: /fhir/Type/id
                body: dict[str, Any] = {"resourceType": resource_type, "id": path[3]}
                if resource_type == "Patient":
                    body.update(gender="female", birthDate="1950-01-01")
            elif resource_type == "Coverage":
                body = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": 1,
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "Coverage",
                                "id": "cov-1",
                                "status": "active",
                                "beneficiary": {"reference": f"Patient/{PATIENT_ID}"},
                                "payor": [{"display": "Example Medicare Advantage Plan"}],
                            }
                        }
                    ],
                }
            else:
                body = {"resourceType": "Bundle", "type": "searchset", "total": 0}
            data = json.dumps(body).encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            )
            self.wfile.write(head.encode() + data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


def order_sign_body(fhir_server: str, missing: int) -> dict[str, Any]:
    """An order-sign call for an insulin pump that sends all but ``missing`` prefetch keys."""
    keys = list(SERVICE.prefetch)
    sent = {key: None for key in keys[missing:]}
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": "bench-token",
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "patient/*.read",
            "subject": "bench",
        },
        "context": {
            "userId": "Practitioner/pract-1",
            "patientId": PATIENT_ID,
            "encounterId": "enc-1",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "DeviceRequest",
                            "id": "devreq-1",
                            "status": "draft",
                            "intent": "original-order",
                            "subject": subject,
                            "authoredOn": "2026-11-28",
                            "codeCodeableConcept": {
                                "coding": [
                                    {
                                        "system": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
                                        "code": "E0784",
                                    }
                                ]
                            },
                        }
                    }
                ],
            },
        },
        "prefetch": sent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("cds_service").setLevel(logging.ERROR)  # no per-call warnings
    delay_s = args.delay_ms / 1000
    server, thread = start_delayed_fhir_server(delay_s)
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    app = create_app({"AUTH": "optional", "FHIR_SERVERS": ["http://127.0.0.1"]})
    client = app.test_client()
    path = f"/cds-services/{SERVICE.id}"
    total_keys = len(SERVICE.prefetch)
    print(
        f"FHIR server answers every query after {args.delay_ms:.0f} ms; "
        f"{args.runs} calls per row; order-sign has {total_keys} prefetch keys"
    )
    print(
        f"{'missing keys':>12} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} "
        f"{'one after another':>18}"
    )
    try:
        for missing in sorted({1, 4, total_keys}):
            client.post(path, json=order_sign_body(base, missing))  # warm the pool
            timings = []
            for _ in range(args.runs):
                started = time.perf_counter()
                response = client.post(path, json=order_sign_body(base, missing))
                timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    print(f"unexpected HTTP {response.status_code}: {response.get_json()}")
                    return 1
            timings.sort()
            p90 = timings[max(0, int(len(timings) * 0.9) - 1)]
            print(
                f"{missing:>12} {statistics.median(timings):>10.0f} {p90:>8.0f} "
                f"{timings[-1]:>8.0f} {missing * args.delay_ms:>15.0f} ms"
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        close_shared_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
