"""The ordered, versioned steps that build the feedback/audit database.

A released step never changes: each one declares the tables it creates as they were at
that version (not ``cds_service.tables``, which follows the latest schema), so a new
database and an old one upgraded step by step end up the same. To change the schema,
append a step and update ``cds_service.tables`` to match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cds_service.tables import RowId, UtcDateTime


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _audit_and_feedback(connection: Connection) -> None:
    """Version 1: service calls, decisions with their criteria, issued cards, feedback."""
    m = sa.MetaData()
    sa.Table(
        "service_call",
        m,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("recorded_at", UtcDateTime, nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(50), nullable=False),
        sa.Column("hook_instance", sa.String(100), nullable=False),
        sa.Column("client_iss", sa.Text),
        sa.Column("crd_version", sa.String(10), nullable=False),
        sa.Column("decision_count", sa.Integer, nullable=False),
        sa.Column("card_count", sa.Integer, nullable=False),
        sa.Column("prefetch_ms", sa.Float, nullable=False),
        sa.Column("fetch_ms", sa.Float, nullable=False),
        sa.Column("decide_ms", sa.Float, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=False),
        sa.Index("ix_service_call_hook_instance", "hook_instance"),
        sa.Index("ix_service_call_recorded_at", "recorded_at"),
    )
    sa.Table(
        "decision",
        m,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", RowId, sa.ForeignKey("service_call.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("coverage_assertion_id", sa.String(100)),
        sa.Column("order_references", sa.JSON, nullable=False),
        sa.Column("policy_id", sa.String(100), nullable=False),
        sa.Column("policy_version", sa.String(50), nullable=False),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Index("ix_decision_call_id", "call_id"),
        sa.Index("ix_decision_coverage_assertion_id", "coverage_assertion_id"),
    )
    sa.Table(
        "criterion_result",
        m,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "decision_id", RowId, sa.ForeignKey("decision.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.Column("rule_kind", sa.String(20), nullable=False),
        sa.Column("criterion_id", sa.String(100), nullable=False),
        sa.Column("truth", sa.String(10), nullable=False),
        sa.Column("deciding", sa.Boolean, nullable=False),
        sa.Column("evidence_references", sa.JSON, nullable=False),
        sa.Index("ix_criterion_result_decision_id", "decision_id"),
    )
    sa.Table(
        "issued_card",
        m,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", RowId, sa.ForeignKey("service_call.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("decision_id", RowId, sa.ForeignKey("decision.id", ondelete="SET NULL")),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("card_type", sa.String(100)),
        sa.Column("indicator", sa.String(20), nullable=False),
        sa.Column("suggestion_uuids", sa.JSON, nullable=False),
        sa.Index("ix_issued_card_card_uuid", "card_uuid"),
        sa.Index("ix_issued_card_call_id", "call_id"),
    )
    sa.Table(
        "feedback",
        m,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("client_iss", sa.Text),
        sa.Column(
            "card_id", RowId, sa.ForeignKey("issued_card.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_system", sa.String(500)),
        sa.Column("override_code", sa.String(200)),
        sa.Column("override_display", sa.String(500)),
        sa.Column("has_user_comment", sa.Boolean, nullable=False),
        sa.Column("outcome_timestamp", UtcDateTime, nullable=False),
        sa.Index("ix_feedback_card_id", "card_id"),
        sa.Index("ix_feedback_outcome_timestamp", "outcome_timestamp"),
    )
    m.create_all(connection)


def _jwt_replay(connection: Connection) -> None:
    """Version 2: client JWT ids seen, shared by every worker process and replica."""
    m = sa.MetaData()
    sa.Table(
        "jwt_replay",
        m,
        sa.Column("iss", sa.Text, primary_key=True),
        sa.Column("jti", sa.Text, primary_key=True),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Index("ix_jwt_replay_expires_at", "expires_at"),
    )
    m.create_all(connection)


def _decision_pages(connection: Connection) -> None:
    """Version 3: the unguessable id of each call's decision page; whether each criterion
    was checked (False when the data it reads could not be retrieved)."""
    m = sa.MetaData()
    sa.Table("service_call", m, sa.Column("id", RowId, primary_key=True))
    sa.Table(
        "decision_page",
        m,
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column(
            "call_id", RowId, sa.ForeignKey("service_call.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Index("ix_decision_page_call_id", "call_id"),
    )
    m.create_all(connection, tables=[m.tables["decision_page"]])
    connection.execute(
        sa.text("ALTER TABLE criterion_result ADD COLUMN checked BOOLEAN NOT NULL DEFAULT TRUE")
    )


def _backend_access_tokens(connection: Connection) -> None:
    """Version 4: access tokens issued to DTR clients (SMART Backend Services), kept as the
    SHA-256 of the token with the client, its scopes and its expiry."""
    m = sa.MetaData()
    sa.Table(
        "backend_access_token",
        m,
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("issued_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Index("ix_backend_access_token_expires_at", "expires_at"),
    )
    m.create_all(connection)


def _dtr_knowledge(connection: Connection) -> None:
    """Version 5: what a DTR form needs to decide again without the record: the order
    facts of each decision, and each open criterion's truth once answered."""
    connection.execute(sa.text("ALTER TABLE decision ADD COLUMN order_facts JSON"))
    connection.execute(sa.text("ALTER TABLE criterion_result ADD COLUMN if_answered JSON"))


def _smart_app_sessions(connection: Connection) -> None:
    """Version 6: the documentation app's sessions (the authorization in progress, then the
    user's access token), kept server-side and shared by every replica."""
    m = sa.MetaData()
    sa.Table(
        "smart_app_session",
        m,
        sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 of the cookie value
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Index("ix_smart_app_session_expires_at", "expires_at"),
    )
    m.create_all(connection)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit trail, issued cards and feedback", _audit_and_feedback),
    Migration(2, "JWT replay cache", _jwt_replay),
    Migration(3, "decision pages; criteria not checked", _decision_pages),
    Migration(4, "access tokens of DTR clients", _backend_access_tokens),
    Migration(5, "order facts and answered truths for DTR forms", _dtr_knowledge),
    Migration(6, "documentation app sessions", _smart_app_sessions),
)
