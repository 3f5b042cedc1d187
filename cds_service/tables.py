"""The feedback/audit database as it stands after the last migration (SQLAlchemy Core).

Queries use these tables. The schema itself is created and changed only by the steps in
``cds_service.migrations``; a test checks that a migrated database matches this module.

What is stored is identifiers, codes, outcomes and timings: never names, free text,
tokens or resource bodies (an access token we issue is kept only as its SHA-256; the
documentation app's sessions hold the user's token for the EHR, server-side).

    service_call        one row per answered service call (also calls with no decision)
     +-- decision        one row per coverage decision of that call
     |    +-- criterion_result   each criterion's truth and its evidence references
     +-- decision_page   the unguessable id of the call's decision page
     +-- issued_card     each card returned, its suggestion uuids, the decision it is about
          +-- feedback   each feedback entry a client sent about that card
    jwt_replay          client JWT ids seen, until they expire (replay protection)
    backend_access_token  SHA-256 of each access token issued to a DTR client, until it expires
    smart_app_session   the documentation app's server-side sessions (until they expire)
    schema_version      the migration steps applied
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every backend.

    PostgreSQL keeps it as ``timestamptz``; SQLite, which has no time zones, keeps the UTC
    wall time, and the value read back is made aware again.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)

service_call = sa.Table(
    "service_call",
    metadata,
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

decision = sa.Table(
    "decision",
    metadata,
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
    # The order facts the rules' scopes read (codes; None for decisions recorded before).
    sa.Column("order_facts", sa.JSON),
    sa.Index("ix_decision_call_id", "call_id"),
    sa.Index("ix_decision_coverage_assertion_id", "coverage_assertion_id"),
)

criterion_result = sa.Table(
    "criterion_result",
    metadata,
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
    # False: unknown because the data it reads could not be retrieved (not checked).
    sa.Column("checked", sa.Boolean, nullable=False, server_default=sa.true()),
    # [truth if its answers hold, truth if they do not] (CriterionResult.if_answered).
    sa.Column("if_answered", sa.JSON),
    sa.Index("ix_criterion_result_decision_id", "decision_id"),
)

decision_page = sa.Table(
    "decision_page",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column(
        "call_id", RowId, sa.ForeignKey("service_call.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Index("ix_decision_page_call_id", "call_id"),
)

issued_card = sa.Table(
    "issued_card",
    metadata,
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

feedback = sa.Table(
    "feedback",
    metadata,
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

jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("iss", sa.Text, primary_key=True),
    sa.Column("jti", sa.Text, primary_key=True),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Index("ix_jwt_replay_expires_at", "expires_at"),
)

backend_access_token = sa.Table(
    "backend_access_token",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Index("ix_backend_access_token_expires_at", "expires_at"),
)

# The documentation app's sessions: the authorization in progress (state, PKCE verifier,
# nonce), then the user's access token and launch context, until the session expires.
# It holds the user's token, which never leaves the server; expired rows are removed.
smart_app_session = sa.Table(
    "smart_app_session",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 of the cookie value
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_smart_app_session_expires_at", "expires_at"),
)
