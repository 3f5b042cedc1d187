"""In-process latency of order-sign, and the JSON floor, for a fixture and a real record.

Run: ``.venv/bin/python bench/bench_order_sign.py [--runs N]`` (or ``make bench``).
Reports median and p99 of: the full service call through the Flask test client (envelope
validation, record parsing, policy evaluation, cards, system actions) and, as the floor,
``json.loads`` + ``json.dumps`` of the same request body. The largest Synthea record in
../shared/synthea-r4 is sent as prefetch with an insulin pump order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import FIXTURES, ORDER_SIGN, SHARED, load_json, make_app  # noqa: E402
from tests.corpus import record_prefetch  # noqa: E402
from tests.order_requests import PUMP_ORDERS, order_sign_request, pump_order_resources  # noqa: E402


def measure(call: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, p99) in milliseconds over ``runs`` calls, after one warm-up call."""
    call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def report(name: str, body: bytes, runs: int) -> None:
    client = make_app().test_client()

    def service_call() -> None:
        response = client.post(ORDER_SIGN, data=body, content_type="application/json")
        if response.status_code != 200:
            raise RuntimeError(response.get_data(as_text=True)[:300])

    def json_floor() -> None:
        json.dumps(json.loads(body))

    for label, call in (("order-sign", service_call), ("json parse+dump", json_floor)):
        median, p99 = measure(call, runs)
        size = f"{len(body) / 1e6:6.2f} MB"
        print(f"{name:<48} {label:<16} {size}  median {median:8.2f} ms  p99 {p99:8.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    fixture = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"
    report(fixture.stem, fixture.read_bytes(), args.runs)
    records = sorted((SHARED / "synthea-r4").glob("*.json"), key=lambda p: p.stat().st_size)
    if records:
        largest = records[-1]
        patient_id, prefetch = record_prefetch(load_json(largest))
        insulin_pump = next(o for o in PUMP_ORDERS if o.label == "E0784+insulin")
        orders = pump_order_resources(insulin_pump, patient_id)
        body = order_sign_request(
            patient_id, orders, prefetch, "5f0e7a3c-1d2b-4c3d-9e4f-5a6b7c8d9e0f"
        )
        report(
            f"synthea {largest.stem.split('__')[1]} (largest)",
            json.dumps(body).encode(),
            max(5, args.runs // 5),
        )
    else:
        print("../shared/synthea-r4 not present: record benchmark skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
