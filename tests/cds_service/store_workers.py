"""Code the store tests run in other processes (importable by ``multiprocessing`` spawn).

Run as ``python -m tests.cds_service.store_workers load URL`` it writes audit records
without pause and prints the id of each one as soon as its transaction has committed,
until it is killed.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, date, datetime
from typing import Any

from cds_service.audit import (
    AuditRecord,
    CallTimings,
    CardRecord,
    CriterionRecord,
    DecisionRecord,
    write_audit_record,
)
from cds_service.replay import ReplayCache
from cds_service.store import open_store


def synthetic_record(tag: str) -> AuditRecord:
    """An audit record of one call with one decision, two criteria and two cards."""
    assertion = str(uuid.uuid4())
    return AuditRecord(
        recorded_at=datetime.now(UTC),
        service_id="infusion-pump-coverage-order-sign",
        hook="order-sign",
        hook_instance=str(uuid.uuid4()),
        client_iss=f"https://ehr.example.org/{tag}",
        crd_version="2.0",
        timings=CallTimings(prefetch=0.001, fetch=0.0, decide=0.01, total=0.012),
        decisions=(
            DecisionRecord(
                coverage_assertion_id=assertion,
                order_references=(f"DeviceRequest/{tag}",),
                policy_id="MCS051.01",
                policy_version="test",
                rule_id="EIP-CSII",
                outcome="conditional",
                as_of=date(2026, 11, 20),
                criteria=(
                    CriterionRecord(
                        "EIP-CSII",
                        "indication",
                        "EIP-CSII-DIABETES",
                        "met",
                        True,
                        (f"Condition/{tag}",),
                    ),
                    CriterionRecord("EIP-CSII", "indication", "EIP-CSII-HOME", "unknown", True, ()),
                ),
            ),
        ),
        cards=(
            CardRecord(str(uuid.uuid4()), "guideline", "warning", (), 0),
            CardRecord(
                str(uuid.uuid4()), "therapy-alternatives-opt", "info", (str(uuid.uuid4()),), 0
            ),
        ),
    )


def migrate_in_process(url: str) -> int:
    """Open the store at ``url`` and migrate it; the schema version reached."""
    store = open_store(url, "/unused")
    try:
        return store.migrate()
    finally:
        store.dispose()


def write_records(url: str, tag: str, count: int, start: Any) -> list[tuple[int, str, str]]:
    """Wait for ``start`` (an Event), then write ``count`` records, each in its own
    transaction; (call id, first card uuid, assertion id) of each."""
    store = open_store(url, "/unused")
    written = []
    try:
        start.wait()
        for n in range(count):
            record = synthetic_record(f"{tag}-{n}")
            with store.transaction() as connection:
                call_id = write_audit_record(connection, record)
            assertion = record.decisions[0].coverage_assertion_id or ""
            written.append((call_id, record.cards[0].card_uuid, assertion))
    finally:
        store.dispose()
    return written


def remember_in_process(url: str, jti: str, start: Any) -> bool:
    """Wait for ``start``, then ask the shared replay cache about ``jti`` once."""
    store = open_store(url, "/unused")
    try:
        start.wait()
        return ReplayCache(store).remember(
            jti, "https://ehr.example.org", datetime(2099, 1, 1, tzinfo=UTC).timestamp()
        )
    finally:
        store.dispose()


def _load(url: str) -> None:
    store = open_store(url, "/unused")
    store.migrate()
    n = 0
    while True:
        record = synthetic_record(f"load-{n}")
        with store.transaction() as connection:
            call_id = write_audit_record(connection, record)
        # Acknowledged: the transaction has committed.
        sys.stdout.write(f"{call_id} {record.cards[0].card_uuid}\n")
        sys.stdout.flush()
        n += 1


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "load":
    _load(sys.argv[2])
