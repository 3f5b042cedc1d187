"""Durability of the audit trail: concurrent writer processes, and a writer killed mid-load."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from cds_service.audit import write_audit_record
from cds_service.store import Store
from cds_service.tables import criterion_result, decision, issued_card, service_call
from tests.cds_service.store_workers import synthetic_record, write_records

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 6
CALLS_PER_WRITER = 40


def _count(store: Store, table: sa.Table) -> int:
    with store.reading() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_concurrent_writer_processes_lose_nothing(database_url: str, store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(WRITERS) as pool:
            pending = pool.starmap_async(
                write_records,
                [(database_url, f"w{n}", CALLS_PER_WRITER, start) for n in range(WRITERS)],
            )
            start.set()
            results = pending.get(timeout=240)
    written = [item for result in results for item in result]
    assert len(written) == WRITERS * CALLS_PER_WRITER
    assert len({call_id for call_id, _, _ in written}) == len(written)
    assert _count(store, service_call) == len(written)
    assert _count(store, decision) == len(written)
    assert _count(store, criterion_result) == 2 * len(written)
    assert _count(store, issued_card) == 2 * len(written)
    with store.reading() as connection:
        cards = set(connection.execute(sa.select(issued_card.c.card_uuid)).scalars())
        assertions = set(connection.execute(sa.select(decision.c.coverage_assertion_id)).scalars())
    assert {card for _, card, _ in written} <= cards
    assert {assertion for _, _, assertion in written} == assertions


def test_a_writer_killed_mid_load_leaves_every_acknowledged_row_and_a_usable_database(
    database_url: str, store: Store
) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.cds_service.store_workers", "load", database_url],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[tuple[int, str]] = []
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 120
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            call_id, card = line.split()
            acknowledged.append((int(call_id), card))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        # Lines the writer flushed after the last one read are acknowledged too.
        rest, errors = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    complete = [line.split() for line in rest.splitlines() if line.count(" ") == 1]
    acknowledged += [(int(call_id), card) for call_id, card in complete]
    assert writer.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 150, errors[-2000:]

    ids = [call_id for call_id, _ in acknowledged]
    with store.reading() as connection:
        calls = connection.execute(
            sa.select(
                service_call.c.id, service_call.c.decision_count, service_call.c.card_count
            ).where(service_call.c.id.in_(ids))
        ).all()
        cards = set(
            connection.execute(
                sa.select(issued_card.c.card_uuid).where(issued_card.c.call_id.in_(ids))
            ).scalars()
        )
        decisions = connection.execute(
            sa.select(sa.func.count()).select_from(decision).where(decision.c.call_id.in_(ids))
        ).scalar_one()
        # Every call in the database is whole: a killed transaction left nothing half-written.
        partial = connection.execute(
            sa.select(service_call.c.id)
            .outerjoin(issued_card, issued_card.c.call_id == service_call.c.id)
            .group_by(service_call.c.id, service_call.c.card_count)
            .having(sa.func.count(issued_card.c.id) != service_call.c.card_count)
        ).all()
        if store.backend == "sqlite":
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert sorted(c.id for c in calls) == sorted(ids)
    assert all((c.decision_count, c.card_count) == (1, 2) for c in calls)
    assert {card for _, card in acknowledged} <= cards
    assert decisions == len(ids)
    assert partial == []

    # Still usable: another write goes in and reads back.
    with store.transaction() as connection:
        call_id = write_audit_record(connection, synthetic_record("after-kill"))
    with store.reading() as connection:
        assert (
            connection.execute(
                sa.select(service_call.c.id).where(service_call.c.id == call_id)
            ).scalar_one()
            == call_id
        )
