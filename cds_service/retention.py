"""How long the audit trail is kept, and removing what is older.

``CDS_AUDIT_RETENTION_DAYS`` (default 3653, ten years: the record retention Medicare
Advantage organisations are held to, 42 CFR 422.504(d)) bounds the audit trail. Each
worker process sweeps it in the background, at most once an hour and first a minute
after it starts: service calls recorded before the cutoff go, with their decisions,
criteria, issued cards and the feedback on those cards. The same sweep drops JWT ids
whose token has expired (the replay cache also drops them whenever it is written).
``infusion-pump-cds audit purge [--before DATE]`` does the same at once, from the
command line, and can count what it would remove (``--dry-run``).

Deletion goes by batches of service calls, each batch in its own transaction, so a first
purge of years of records neither holds a long lock nor needs one huge transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from cds_service.store import Store
from cds_service.tables import (
    criterion_result,
    decision,
    feedback,
    issued_card,
    jwt_replay,
    service_call,
)

if TYPE_CHECKING:
    from cds_service.settings import Settings

logger = logging.getLogger(__name__)

BATCH_CALLS = 500
SWEEP_INTERVAL_S = 3600.0
FIRST_SWEEP_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """Rows removed (or, for a dry run, that would be), per table."""

    service_calls: int = 0
    decisions: int = 0
    criteria: int = 0
    cards: int = 0
    feedback: int = 0
    expired_jwt_ids: int = 0

    def __add__(self, other: PurgeCounts) -> PurgeCounts:
        return PurgeCounts(
            *(
                getattr(self, name) + getattr(other, name)
                for name in PurgeCounts.__dataclass_fields__
            )
        )


def retention_cutoff(settings: Settings, now: datetime) -> datetime:
    """The instant before which audit records are no longer kept."""
    return now - timedelta(days=settings.audit_retention_days)


def _count(connection: Connection, table: sa.Table, condition: sa.ColumnElement[bool]) -> int:
    return int(
        connection.execute(
            sa.select(sa.func.count()).select_from(table).where(condition)
        ).scalar_one()
    )


def _purge_calls(connection: Connection, call_ids: list[int], dry_run: bool) -> PurgeCounts:
    """Remove these service calls and everything recorded under them (children first, so
    it does not depend on the database enforcing the foreign keys' ON DELETE CASCADE)."""
    decisions = sa.select(decision.c.id).where(decision.c.call_id.in_(call_ids))
    cards = sa.select(issued_card.c.id).where(issued_card.c.call_id.in_(call_ids))
    steps = (
        ("feedback", feedback, feedback.c.card_id.in_(cards)),
        ("criteria", criterion_result, criterion_result.c.decision_id.in_(decisions)),
        ("cards", issued_card, issued_card.c.call_id.in_(call_ids)),
        ("decisions", decision, decision.c.call_id.in_(call_ids)),
        ("service_calls", service_call, service_call.c.id.in_(call_ids)),
    )
    counts: dict[str, int] = {}
    for name, table, condition in steps:
        if dry_run:
            counts[name] = _count(connection, table, condition)
        else:
            counts[name] = int(connection.execute(sa.delete(table).where(condition)).rowcount)
    return PurgeCounts(**counts)


def purge_audit(
    store: Store, before: datetime, *, dry_run: bool = False, batch_size: int = BATCH_CALLS
) -> PurgeCounts:
    """Remove every service call recorded before ``before`` (timezone-aware), with its
    decisions, criteria, cards and their feedback. Returns the counts; ``dry_run`` only
    counts."""
    total = PurgeCounts()
    last_id = 0
    while True:
        with store.transaction() as connection:
            # Batches by id; a dry run walks past what it counted, a purge re-reads the oldest.
            call_ids = [
                int(row[0])
                for row in connection.execute(
                    sa.select(service_call.c.id)
                    .where(service_call.c.recorded_at < before, service_call.c.id > last_id)
                    .order_by(service_call.c.id)
                    .limit(batch_size)
                )
            ]
            if not call_ids:
                break
            total += _purge_calls(connection, call_ids, dry_run)
            if dry_run:
                last_id = call_ids[-1]
    return total


def purge_expired_jwt_ids(store: Store, now: datetime, *, dry_run: bool = False) -> int:
    """Drop the JWT ids whose token expired before ``now``: a replay of one is refused by
    its ``exp`` anyway."""
    expired = jwt_replay.c.expires_at <= now
    with store.transaction() as connection:
        if dry_run:
            return _count(connection, jwt_replay, expired)
        return int(connection.execute(sa.delete(jwt_replay).where(expired)).rowcount)


class RetentionSweeper:
    """Sweeps the audit trail in a background thread, at most every ``interval_s``."""

    def __init__(
        self,
        store: Store,
        retention_days: int,
        clock: Callable[[], datetime],
        *,
        interval_s: float = SWEEP_INTERVAL_S,
        first_after_s: float = FIRST_SWEEP_AFTER_S,
    ) -> None:
        self.store = store
        self.retention = timedelta(days=retention_days)
        self.clock = clock
        self.interval_s = interval_s
        self._next = time.monotonic() + first_after_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Other state that expires (e.g. DTR sessions): each callable removes what has
        # expired at the instant it is given and returns how many it removed.
        self.expiring: list[Callable[[datetime], int]] = []

    def maybe_sweep(self) -> None:
        """Start a sweep when one is due and none is running (after each request)."""
        now = time.monotonic()
        if now < self._next:
            return
        with self._lock:
            if now < self._next or (self._thread is not None and self._thread.is_alive()):
                return
            self._next = now + self.interval_s
            self._thread = threading.Thread(target=self.sweep, name="audit-retention", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running sweep to end (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def sweep(self) -> PurgeCounts | None:
        """Purge what is past retention now; None when the database could not be used."""
        now = self.clock()
        try:
            counts = purge_audit(self.store, now - self.retention)
            counts = counts + PurgeCounts(expired_jwt_ids=purge_expired_jwt_ids(self.store, now))
            for expire in self.expiring:
                expire(now)
        except SQLAlchemyError as exc:
            logger.error(
                "audit retention sweep failed: database unavailable (%s)", type(exc).__name__
            )
            return None
        if counts.service_calls or counts.expired_jwt_ids:
            logger.info(
                "audit retention: removed %d service calls recorded before %s, %d expired JWT ids",
                counts.service_calls,
                (now - self.retention).date().isoformat(),
                counts.expired_jwt_ids,
            )
        return counts
