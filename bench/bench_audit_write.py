"""Audit write latency per answered call: ``record_service_call`` on real calls' records.

Run: ``.venv/bin/python bench/bench_audit_write.py [--database-url URL] [--runs N]``.
Default database: a SQLite file (WAL) in a temporary folder; pass a
``postgresql://`` URL to measure PostgreSQL. Two order-sign calls (a vancomycin pump
and an insulin pump) are answered once to capture their audit records, then each record
is written ``--runs`` times.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service import routes  # noqa: E402
from cds_service.audit import record_service_call  # noqa: E402
from tests.builders import (  # noqa: E402
    INSULIN_PUMP,
    VANCOMYCIN_PUMP,
    named_patient_request,
)
from tests.conftest import ORDER_SIGN, make_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'audit.sqlite3'}"
        captured: list[Any] = []
        build = routes.build_audit_record

        def capture(**fields: Any) -> Any:
            captured.append(build(**fields))
            return captured[-1]

        routes.build_audit_record = capture  # type: ignore[assignment]
        app = make_app({"DATABASE_URL": url})
        client = app.test_client()
        for entries in (VANCOMYCIN_PUMP, INSULIN_PUMP):
            response = client.post(ORDER_SIGN, json=named_patient_request(entries))
            if response.status_code != 200:
                raise RuntimeError(response.get_data(as_text=True)[:300])
        store = app.extensions["cds_store"]
        for record in captured:
            samples, cpu = [], []
            # Each call has its own decision page token (the table keeps one row per token).
            records = [
                dataclasses.replace(record, decision_page_token=secrets.token_urlsafe(32))
                for _ in range(args.runs)
            ]
            for each in records:
                start, start_cpu = time.perf_counter(), time.thread_time()
                if not record_service_call(store, each):
                    raise RuntimeError("audit write failed")
                samples.append((time.perf_counter() - start) * 1000)
                cpu.append((time.thread_time() - start_cpu) * 1000)
            samples.sort()
            criteria = sum(len(d.criteria) for d in record.decisions)
            print(
                f"{store.backend:<10} decisions={len(record.decisions)} criteria={criteria} "
                f"cards={len(record.cards)}: median {statistics.median(samples):.2f} ms, "
                f"p95 {samples[int(len(samples) * 0.95)]:.2f} ms, CPU time median "
                f"{statistics.median(cpu):.2f} ms (n={args.runs})"
            )
        store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
