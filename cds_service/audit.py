"""The audit trail: what the service told a clinician about an order, and why.

Every answered service call is recorded (CRD found-37, found-11): one ``service_call``
row (time, service, hookInstance, client ``iss``, timings), one ``decision`` row per
coverage decision (coverage-assertion-id, orders, policy and version, rule, outcome),
each criterion's truth with the FHIR references of its evidence, and every card and
suggestion uuid issued, linked to the decision it is about (as the hook handed them
over: nothing is read back from the response). Calls without a decision are recorded too, so their
cards can be found when feedback about them arrives. Calls answered with an error (4xx,
5xx) issued no guidance and are not recorded here; the application log has them.

Only identifiers, codes and timings are kept: no names, free text (card text, evidence
summaries), tokens or resource bodies.

Recording never fails the clinical answer: when the database cannot be written, the call
is answered and the failure is logged as an error.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import SQLAlchemyError

from cds_service import operations
from cds_service.store import Store
from cds_service.tables import (
    UtcDateTime,
    criterion_result,
    decision,
    decision_page,
    issued_card,
    service_call,
)
from coverage_policy.model import Decision
from hooks.decide import EpisodeDecision
from hooks.request import HookRequest
from hooks.service import HookResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallTimings:
    """Seconds spent on one call, measured with ``time.perf_counter``.

    ``prefetch`` is resolving the prefetch (``fetch`` is the part of it spent querying
    the FHIR server), ``decide`` is the hook handler, ``total`` the whole call before
    the audit write.
    """

    prefetch: float
    fetch: float
    decide: float
    total: float


@dataclass(frozen=True, slots=True)
class CriterionRecord:
    rule_id: str
    rule_kind: str
    criterion_id: str
    truth: str
    deciding: bool
    evidence_references: tuple[str, ...]
    checked: bool = True
    if_answered: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    coverage_assertion_id: str | None
    order_references: tuple[str, ...]
    policy_id: str
    policy_version: str
    rule_id: str
    outcome: str
    as_of: date
    criteria: tuple[CriterionRecord, ...]
    order_facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CardRecord:
    card_uuid: str
    card_type: str
    indicator: str
    suggestion_uuids: tuple[str, ...]
    decision_position: int | None  # index into AuditRecord.decisions


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Everything recorded about one answered service call."""

    recorded_at: datetime
    service_id: str
    hook: str
    hook_instance: str
    client_iss: str | None
    crd_version: str
    timings: CallTimings
    decisions: tuple[DecisionRecord, ...] = ()
    cards: tuple[CardRecord, ...] = field(default_factory=tuple)
    decision_page_token: str | None = None  # the unguessable id of its decision page


def _criteria(decided: Decision) -> tuple[CriterionRecord, ...]:
    return tuple(
        CriterionRecord(
            rule_id=rule_result.rule.id,
            rule_kind=rule_result.rule.kind.value,
            criterion_id=result.criterion.id,
            truth=result.truth.value,
            deciding=result.deciding,
            evidence_references=tuple(dict.fromkeys(e.reference for e in result.evidence)),
            checked=result.checked,
            if_answered=(
                (result.if_answered[0].value, result.if_answered[1].value)
                if result.if_answered
                else None
            ),
        )
        for rule_result, result in decided.criterion_rows(decided.rule_results)
    )


def decision_record(
    decided: Decision,
    assertion_id: str | None,
    orders: tuple[str, ...],
    order_facts: Mapping[str, Any],
) -> DecisionRecord:
    """What is recorded of one decision: an order's, or one a DTR form reached."""
    return DecisionRecord(
        coverage_assertion_id=assertion_id,
        order_references=orders,
        policy_id=decided.policy_id,
        policy_version=decided.policy_version,
        rule_id=decided.rule_id,
        outcome=decided.outcome.value,
        as_of=decided.as_of,
        criteria=_criteria(decided),
        order_facts=dict(order_facts),
    )


def _decision_record(item: EpisodeDecision, assertion_id: str | None) -> DecisionRecord:
    orders = tuple(order.reference for order in item.episode.orders)
    return decision_record(item.decision, assertion_id, orders, item.order_facts)


def build_audit_record(
    *,
    service_id: str,
    hook_request: HookRequest,
    client_iss: str | None,
    result: HookResult,
    timings: CallTimings,
    recorded_at: datetime,
    decision_page_token: str | None = None,
) -> AuditRecord:
    """The audit record of one answered call: the decisions and the cards the hook issued."""
    assertion_ids = result.assertion_ids or (None,) * len(result.decisions)
    decisions = tuple(
        _decision_record(item, assertion_id)
        for item, assertion_id in zip(result.decisions, assertion_ids, strict=True)
    )
    cards = tuple(
        CardRecord(
            card_uuid=card.uuid,
            card_type=card.card_type,
            indicator=card.indicator,
            suggestion_uuids=card.suggestion_uuids,
            decision_position=card.decision,
        )
        for card in result.cards
    )
    return AuditRecord(
        recorded_at=recorded_at,
        service_id=service_id,
        hook=hook_request.hook,
        hook_instance=hook_request.hook_instance,
        client_iss=client_iss,
        crd_version=hook_request.crd_version,
        timings=timings,
        decisions=decisions,
        cards=cards,
        decision_page_token=decision_page_token if decisions else None,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True, slots=True)
class _AuditRows:
    """An audit record as the rows to insert, prepared before the transaction begins so
    the write lock is held only for the inserts themselves."""

    call: dict[str, Any]
    decisions: list[tuple[dict[str, Any], list[dict[str, Any]]]]  # (row, criteria rows)
    cards: list[tuple[int | None, dict[str, Any]]]  # (decision position, row)
    decision_page_token: str | None


def _audit_rows(record: AuditRecord) -> _AuditRows:
    return _AuditRows(
        _call_row(record), _decision_rows(record), _card_rows(record), record.decision_page_token
    )


def _call_row(record: AuditRecord) -> dict[str, Any]:
    return {
        "recorded_at": record.recorded_at,
        "service_id": record.service_id,
        "hook": record.hook,
        "hook_instance": record.hook_instance,
        "client_iss": record.client_iss,
        "crd_version": record.crd_version,
        "decision_count": len(record.decisions),
        "card_count": len(record.cards),
        "prefetch_ms": _ms(record.timings.prefetch),
        "fetch_ms": _ms(record.timings.fetch),
        "decide_ms": _ms(record.timings.decide),
        "total_ms": _ms(record.timings.total),
    }


def _decision_rows(record: AuditRecord) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each decision's row with the rows of its criteria."""
    return [
        (
            {
                "position": position,
                "coverage_assertion_id": item.coverage_assertion_id,
                "order_references": list(item.order_references),
                "policy_id": item.policy_id,
                "policy_version": item.policy_version,
                "rule_id": item.rule_id,
                "outcome": item.outcome,
                "as_of": item.as_of,
                "order_facts": dict(item.order_facts),
            },
            [
                {
                    "position": index,
                    "rule_id": c.rule_id,
                    "rule_kind": c.rule_kind,
                    "criterion_id": c.criterion_id,
                    "truth": c.truth,
                    "deciding": c.deciding,
                    "evidence_references": list(c.evidence_references),
                    "checked": c.checked,
                    "if_answered": list(c.if_answered) if c.if_answered else None,
                }
                for index, c in enumerate(item.criteria)
            ],
        )
        for position, item in enumerate(record.decisions)
    ]


def _card_rows(record: AuditRecord) -> list[tuple[int | None, dict[str, Any]]]:
    """Each card's row, with the position of the decision it belongs to (None: the call)."""
    return [
        (
            card.decision_position,
            {
                "service_id": record.service_id,
                "card_uuid": card.card_uuid,
                "card_type": card.card_type,
                "indicator": card.indicator,
                "suggestion_uuids": list(card.suggestion_uuids),
            },
        )
        for card in record.cards
    ]


class _DriverInsert:
    """One insert as SQLite's driver takes it: the statement SQLAlchemy compiles for these
    columns, and each value converted by SQLAlchemy's own processor for its column type,
    so a row is stored exactly as ``connection.execute`` would store it, without the
    cost of executing through SQLAlchemy (about a third of the audit write)."""

    __slots__ = ("columns", "sql")

    def __init__(self, table: sa.Table, keys: Sequence[str], dialect: Dialect) -> None:
        compiled = table.insert().compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        self.columns = tuple(
            (key, table.c[key].type.dialect_impl(dialect).bind_processor(dialect))
            for key in compiled.positiontup or ()
        )

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            row[key] if convert is None else convert(row[key]) for key, convert in self.columns
        )


@cache
def _driver_inserts(dialect: Dialect) -> dict[str, _DriverInsert]:
    """The audit write's inserts for SQLite's driver (``dialect``: the engine's)."""

    def keys(table: sa.Table) -> list[str]:
        return [c.name for c in table.c if c.name != "id"]

    return {
        "call": _DriverInsert(service_call, keys(service_call), dialect),
        "decision": _DriverInsert(decision, keys(decision), dialect),
        "criteria": _DriverInsert(criterion_result, keys(criterion_result), dialect),
        "cards": _DriverInsert(issued_card, keys(issued_card), dialect),
        "page": _DriverInsert(decision_page, keys(decision_page), dialect),
    }


def _insert_audit_rows_sqlite(connection: Connection, rows: _AuditRows) -> int:
    """``_insert_audit_rows`` through the SQLite driver's cursor, in the same transaction."""
    driver = connection.connection.driver_connection
    return _insert_audit_rows_driver(driver, connection.dialect, rows)  # type: ignore[arg-type]


def _insert_audit_rows_driver(
    driver: sqlite3.Connection, dialect: Dialect, rows: _AuditRows
) -> int:
    """Insert the rows with the SQLite driver's own cursor (the caller's transaction)."""
    inserts = _driver_inserts(dialect)
    cursor = driver.cursor()

    def insert_one(table: str, row: Mapping[str, Any]) -> int:
        cursor.execute(inserts[table].sql, inserts[table].values(row))
        if cursor.lastrowid is None:
            raise sqlite3.DatabaseError("an audit row was inserted without a row id")
        return cursor.lastrowid

    def insert_many(table: str, many: list[dict[str, Any]]) -> None:
        cursor.executemany(inserts[table].sql, [inserts[table].values(row) for row in many])

    try:
        return _write_rows(rows, insert_one, insert_many)
    finally:
        cursor.close()


def _insert_audit_rows(connection: Connection, rows: _AuditRows) -> int:
    """Insert the rows on ``connection`` (the caller's transaction); the call id. SQLite:
    through its driver's cursor, a statement per table; PostgreSQL: one statement."""
    if connection.dialect.name == "sqlite":
        return _insert_audit_rows_sqlite(connection, rows)
    return _insert_audit_rows_postgresql(connection, rows)


# --- PostgreSQL: the whole audit record in one statement --------------------------------
#
# One INSERT per table chained in CTEs, of fixed text, taking the record as a single JSON
# document the server unpacks (json_to_recordset): one round trip and one parameter per
# call. Separate statements cost twice the CPU in psycopg (each executemany runs as a
# pipeline), and a statement with a parameter per value is too long for psycopg to cache
# its parsing. Each table's rows are inserted in the order separate inserts would number
# them; new ids are read by scalar subqueries, not joins, so that the planner's estimates
# stay those of a few rows (a join of CTEs is costed at thousands, which starts JIT
# compilation on every call).


def _utc_text(value: datetime | None, dialect: Dialect) -> str | None:
    instant = UtcDateTime().process_bind_param(value, dialect)
    return None if instant is None else instant.isoformat()


def _pg_reading(column_type: Any) -> tuple[str, Callable[[Any, Dialect], Any] | None]:
    """How the document carries a column's values and ``json_to_recordset`` reads them
    back: JSON columns as their text (made JSON again in the INSERT, as sent), instants and
    dates as ISO text, strings as text (the column's length still applies)."""
    if isinstance(column_type, sa.JSON):
        return "text", lambda value, _: json.dumps(value)
    if isinstance(column_type, UtcDateTime):
        return "timestamptz", _utc_text
    if isinstance(column_type, sa.Date):
        return "date", lambda value, _: value.isoformat()
    if isinstance(column_type, sa.Boolean):
        return "boolean", None
    if isinstance(column_type, sa.Float):
        return "float8", None
    if isinstance(column_type, sa.Integer):
        return "bigint", None
    return "text", None


class _PgPart:
    """One table's rows in the document (under ``key``): the columns it carries, and the
    statement's pieces that read them into the table."""

    def __init__(
        self, key: str, table: sa.Table, set_by_statement: Sequence[str], placed: bool = False
    ) -> None:
        self.key = key
        self.table = table.name
        # ``of_decision`` and ``n``: the decision a row belongs to and its place in order.
        self.placing = ("of_decision", "n") if placed else ()
        self.columns = tuple(
            (c.name, isinstance(c.type, sa.JSON), *_pg_reading(c.type))
            for c in table.c
            if c.name not in set_by_statement
        )

    def names(self) -> str:
        return ", ".join(name for name, *_ in self.columns)

    def values(self) -> str:
        return ", ".join(
            f"r.{name}::json" if is_json else f"r.{name}" for name, is_json, *_ in self.columns
        )

    def rows(self) -> str:
        declared = [f"{key} integer" for key in self.placing]
        declared += [f"{name} {sql_type}" for name, _, sql_type, _ in self.columns]
        return f"json_to_recordset(%(record)s::json -> '{self.key}') AS r ({', '.join(declared)})"

    def plain(self, row: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
        return {
            name: row[name] if convert is None else convert(row[name], dialect)
            for name, _, _, convert in self.columns
        }


_PG_CALL = _PgPart("call", service_call, ("id",))
_PG_DECISIONS = _PgPart("decisions", decision, ("id", "call_id"))
_PG_CRITERIA = _PgPart("criteria", criterion_result, ("id", "decision_id"), placed=True)
_PG_PAGE = _PgPart("page", decision_page, ("call_id",))
_PG_CARDS = _PgPart("cards", issued_card, ("id", "call_id", "decision_id"), placed=True)

_PG_CALL_ID = "(SELECT id FROM call)"
_PG_DECISION_ID = "(SELECT id FROM decisions WHERE decisions.position = r.of_decision)"

# The chained INSERT of one audit record; ``%(record)s`` is its JSON document.
_PG_AUDIT_STATEMENT = (
    f"WITH call AS (INSERT INTO {_PG_CALL.table} ({_PG_CALL.names()})"
    f" SELECT {_PG_CALL.values()} FROM {_PG_CALL.rows()} RETURNING id),"
    f" decisions AS (INSERT INTO {_PG_DECISIONS.table} (call_id, {_PG_DECISIONS.names()})"
    f" SELECT {_PG_CALL_ID}, {_PG_DECISIONS.values()} FROM {_PG_DECISIONS.rows()}"
    " ORDER BY r.position RETURNING id, position),"
    f" criteria AS (INSERT INTO {_PG_CRITERIA.table} (decision_id, {_PG_CRITERIA.names()})"
    f" SELECT {_PG_DECISION_ID}, {_PG_CRITERIA.values()} FROM {_PG_CRITERIA.rows()}"
    " ORDER BY r.n),"
    f" page AS (INSERT INTO {_PG_PAGE.table} (call_id, {_PG_PAGE.names()})"
    f" SELECT {_PG_CALL_ID}, {_PG_PAGE.values()} FROM {_PG_PAGE.rows()}),"
    f" cards AS (INSERT INTO {_PG_CARDS.table} (call_id, decision_id, {_PG_CARDS.names()})"
    f" SELECT {_PG_CALL_ID}, {_PG_DECISION_ID}, {_PG_CARDS.values()} FROM {_PG_CARDS.rows()}"
    " ORDER BY r.n)"
    " SELECT id FROM call"
)


def _pg_document(rows: _AuditRows, dialect: Dialect) -> str:
    """The JSON document of one record's rows, each value as the statement reads it."""
    criteria = [
        {**_PG_CRITERIA.plain(row, dialect), "of_decision": position}
        for position, (_, criteria_rows) in enumerate(rows.decisions)
        for row in criteria_rows
    ]
    token = rows.decision_page_token
    page = [] if token is None else [_PG_PAGE.plain({"token": token}, dialect)]
    return json.dumps(
        {
            "call": [_PG_CALL.plain(rows.call, dialect)],
            "decisions": [_PG_DECISIONS.plain(row, dialect) for row, _ in rows.decisions],
            "criteria": [{**row, "n": n} for n, row in enumerate(criteria)],
            "page": page,
            "cards": [
                {**_PG_CARDS.plain(row, dialect), "of_decision": position, "n": n}
                for n, (position, row) in enumerate(rows.cards)
            ],
        }
    )


def _insert_audit_rows_postgresql(connection: Connection, rows: _AuditRows) -> int:
    """Insert the rows on ``connection`` (PostgreSQL, the caller's transaction) in one
    statement; the call id."""
    document = _pg_document(rows, connection.dialect)
    return int(connection.exec_driver_sql(_PG_AUDIT_STATEMENT, {"record": document}).scalar_one())


def _write_rows(
    rows: _AuditRows,
    insert_one: Callable[[str, Mapping[str, Any]], int],
    insert_many: Callable[[str, list[dict[str, Any]]], None],
) -> int:
    """The audit write, whatever executes it: the call, each decision with its criteria,
    the decision page, the cards (each with its decision's new id); the call's id."""
    call_id = insert_one("call", rows.call)
    decision_ids: list[int] = []
    for row, criteria in rows.decisions:
        decision_id = insert_one("decision", {**row, "call_id": call_id})
        decision_ids.append(decision_id)
        if criteria:
            insert_many("criteria", [{**c, "decision_id": decision_id} for c in criteria])
    if rows.decision_page_token is not None:
        insert_many("page", [{"token": rows.decision_page_token, "call_id": call_id}])
    if rows.cards:
        insert_many(
            "cards",
            [
                {
                    **row,
                    "call_id": call_id,
                    "decision_id": None if position is None else decision_ids[position],
                }
                for position, row in rows.cards
            ],
        )
    return call_id


def warm_up_write(connection: Connection, record: AuditRecord | None = None) -> None:
    """Run every statement of an audit write once on ``connection`` (whose transaction
    the caller rolls back), so their compiled forms are cached before the first call:
    the statements of ``record``, else of a made-up record that has them all."""
    if record is not None:
        write_audit_record(connection, record)
        return
    now = datetime.now(UTC)
    record = AuditRecord(
        recorded_at=now,
        service_id="warm-up",
        hook="order-sign",
        hook_instance="warm-up",
        client_iss=None,
        crd_version="2.0",
        timings=CallTimings(0.0, 0.0, 0.0, 0.0),
        decisions=(
            DecisionRecord(
                coverage_assertion_id="warm-up",
                order_references=("DeviceRequest/warm-up",),
                policy_id="warm-up",
                policy_version="0",
                rule_id="warm-up",
                outcome="conditional",
                as_of=now.date(),
                criteria=(
                    CriterionRecord("warm-up", "indication", "warm-up", "unknown", True, ()),
                ),
            ),
        ),
        cards=(CardRecord("warm-up", "coverage", "info", (), 0),),
    )
    write_audit_record(connection, record)


def write_audit_record(connection: Connection, record: AuditRecord) -> int:
    """Insert ``record`` on ``connection`` (the caller's transaction); return the call id."""
    return _insert_audit_rows(connection, _audit_rows(record))


def record_service_call(store: Store, record: AuditRecord) -> int | None:
    """Write ``record`` in its own transaction; the call id, or None when it could not be
    written. Never raises: the clinical answer goes out whatever happens here.

    After a database failure, writes are not attempted for ``store.retry_after_s``
    seconds (each call in that time is logged as not recorded), so a database that does
    not answer cannot add its connection timeout to every clinical answer.
    """
    if store.writes_suspended():
        operations.count_audit_failure("database_backoff")
        logger.error(
            "AUDIT NOT RECORDED for service %s hookInstance=%s (%d decisions, %d cards): "
            "database unavailable, retrying shortly",
            record.service_id,
            record.hook_instance,
            len(record.decisions),
            len(record.cards),
        )
        return None
    try:
        rows = _audit_rows(record)
        if store.backend == "sqlite":
            with store.sqlite_write() as driver:
                return _insert_audit_rows_driver(driver, store.engine.dialect, rows)
        with store.transaction() as connection:
            return _insert_audit_rows(connection, rows)
    except Exception as exc:  # the answer must not depend on the audit trail
        # SQLite's driver raises its own errors on the inserts (``_DriverInsert``).
        database_error = isinstance(exc, SQLAlchemyError | sqlite3.Error)
        if database_error:
            store.suspend_writes()
        operations.count_audit_failure("database_error" if database_error else "error")
        logger.error(
            "AUDIT NOT RECORDED for service %s hookInstance=%s (%d decisions, %d cards): %s",
            record.service_id,
            record.hook_instance,
            len(record.decisions),
            len(record.cards),
            type(exc).__name__,
            exc_info=exc,
        )
        return None


_DECISIONS_WITH_CALLS = sa.select(
    decision.c.id.label("decision_id"),
    *(c for c in decision.c if c.name != "id"),
    *(c for c in service_call.c if c.name != "id"),
).join(service_call, service_call.c.id == decision.c.call_id)


def _decision_reports(store: Store, query: sa.Select[Any]) -> list[dict[str, Any]]:
    """Each decision ``query`` selects, with its call, criteria and cards."""
    with store.reading() as connection:
        rows = connection.execute(query).mappings().all()
        return [_decision_report(connection, row) for row in rows]


def audit_for_assertion(store: Store, assertion_id: str) -> list[dict[str, Any]]:
    """Every decision recorded with ``assertion_id``, oldest first, each with its call,
    criteria and cards (plain data for the command line)."""
    return _decision_reports(
        store,
        _DECISIONS_WITH_CALLS.where(decision.c.coverage_assertion_id == assertion_id).order_by(
            service_call.c.recorded_at, decision.c.id
        ),
    )


def audit_for_decision_page(
    store: Store, token: str, recorded_since: datetime
) -> list[dict[str, Any]]:
    """The decisions of the call whose decision page ``token`` names, if it was recorded
    since ``recorded_since`` (pages expire); empty otherwise."""
    return _decision_reports(
        store,
        _DECISIONS_WITH_CALLS.join(decision_page, decision_page.c.call_id == service_call.c.id)
        .where(decision_page.c.token == token, service_call.c.recorded_at >= recorded_since)
        .order_by(decision.c.position),
    )


def _decision_report(connection: Connection, row: sa.RowMapping) -> dict[str, Any]:
    """One decision with its call (``row``), its criteria and the call's cards."""
    decision_id = row["decision_id"]
    return {
        "recorded_at": row["recorded_at"].isoformat(),
        "service_id": row["service_id"],
        "hook": row["hook"],
        "hook_instance": row["hook_instance"],
        "client_iss": row["client_iss"],
        "crd_version": row["crd_version"],
        "timings_ms": {
            "prefetch": row["prefetch_ms"],
            "fetch": row["fetch_ms"],
            "decide": row["decide_ms"],
            "total": row["total_ms"],
        },
        "coverage_assertion_id": row["coverage_assertion_id"],
        "orders": list(row["order_references"]),
        "policy": {"id": row["policy_id"], "version": row["policy_version"]},
        "rule_id": row["rule_id"],
        "outcome": row["outcome"],
        "as_of": row["as_of"].isoformat(),
        "order_facts": dict(row["order_facts"] or {}),
        "criteria": _criteria_report(connection, decision_id),
        "cards": _cards_report(connection, row["call_id"], decision_id),
    }


def _criteria_report(connection: Connection, decision_id: int) -> list[dict[str, Any]]:
    """The decision's criterion results, in the order they were recorded."""
    criteria = connection.execute(
        sa.select(criterion_result)
        .where(criterion_result.c.decision_id == decision_id)
        .order_by(criterion_result.c.position)
    ).mappings()
    return [
        {
            "rule_id": c["rule_id"],
            "rule_kind": c["rule_kind"],
            "criterion_id": c["criterion_id"],
            "truth": c["truth"],
            "deciding": c["deciding"],
            "checked": c["checked"],
            "if_answered": c["if_answered"],
            "evidence": list(c["evidence_references"]),
        }
        for c in criteria
    ]


def _cards_report(connection: Connection, call_id: int, decision_id: int) -> list[dict[str, Any]]:
    """The cards of the call, each saying whether it is about this decision."""
    cards = connection.execute(
        sa.select(issued_card).where(issued_card.c.call_id == call_id).order_by(issued_card.c.id)
    ).mappings()
    return [
        {
            "uuid": card["card_uuid"],
            "type": card["card_type"],
            "indicator": card["indicator"],
            "suggestions": list(card["suggestion_uuids"]),
            "about_this_decision": card["decision_id"] == decision_id,
        }
        for card in cards
    ]
