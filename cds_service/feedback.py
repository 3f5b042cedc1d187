"""CDS Hooks feedback: what clinicians did with the cards this service issued.

``POST /cds-services/{id}/feedback`` carries ``{"feedback": [...]}``. Each entry is
checked against the JSON Schema (``schemas/feedback.schema.json``: cds-fb-1 outcome,
cds-fb-2 acceptedSuggestions when accepted, cds-fb-3 reason or userComment, an RFC 3339
UTC ``outcomeTimestamp``), then against the audit trail: the card must be one this
service id issued, and every accepted suggestion must be one of that card's.

A card the service never issued is a 400, not a 404: the feedback endpoint exists, and
it is the body that names something unknown, like any other invalid member; a batch
may mix known and unknown cards, and each issue says which entry is wrong. A batch is
stored whole or not at all, so a client can correct it and send it again.

What is stored: the card, outcome, accepted suggestion uuids, the override reason's
coding, whether a comment was written (never the comment: it is free text), the
outcome time and the client ``iss``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from typing import Any

import sqlalchemy as sa
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from sqlalchemy.engine import Connection

from cds_service.errors import BadRequest, Issue
from cds_service.schema_issues import schema_issues
from cds_service.store import Store
from cds_service.tables import decision, feedback, issued_card, service_call

_RULES = {
    "anyOf": "an overrideReason needs a reason, a userComment, or both (cds-fb-3)",
    "enum": "outcome must be 'accepted' or 'overridden' (cds-fb-1)",
}


@cache
def _feedback_validator() -> Draft202012Validator:
    text = resources.files("cds_service").joinpath("schemas/feedback.schema.json").read_text()
    return Draft202012Validator(json.loads(text))


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One validated feedback entry, as stored (uuids lower-case, without ``urn:uuid:``)."""

    card_uuid: str
    outcome: str
    accepted_suggestions: tuple[str, ...]
    override_system: str | None
    override_code: str | None
    override_display: str | None
    has_user_comment: bool
    outcome_timestamp: datetime


def _uuid(value: str) -> str:
    return value.removeprefix("urn:uuid:").lower()


def _describe(error: ValidationError, where: str) -> str:
    """The feedback rule a schema violation breaks, in words a client developer knows."""
    if error.validator == "required" and "acceptedSuggestions" in error.message:
        return "an accepted outcome needs acceptedSuggestions (cds-fb-2)"
    if error.validator == "pattern" and where.endswith("outcomeTimestamp"):
        return "outcomeTimestamp must be an RFC 3339 date-time in UTC, e.g. 2026-11-28T15:04:05Z"
    if error.validator == "pattern":
        return "must be a uuid"
    return _RULES.get(str(error.validator), str(error.message))


def _timestamp(text: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest.single(
            f"{where}: {text!r} is not a valid date-time (RFC 3339)", where
        ) from exc


def parse_feedback(body: Any) -> list[FeedbackEntry]:
    """The entries of a feedback request body, or ``BadRequest`` naming every problem."""
    issues = schema_issues(_feedback_validator(), body, describe=_describe)
    if issues:
        raise BadRequest(issues)
    entries = []
    for index, item in enumerate(body["feedback"]):
        where = f"feedback[{index}]"
        override = item.get("overrideReason") or {}
        reason = override.get("reason") or {}
        entries.append(
            FeedbackEntry(
                card_uuid=_uuid(item["card"]),
                outcome=item["outcome"],
                accepted_suggestions=tuple(
                    dict.fromkeys(_uuid(s["id"]) for s in item.get("acceptedSuggestions") or [])
                ),
                override_system=reason.get("system"),
                override_code=reason.get("code"),
                override_display=reason.get("display"),
                has_user_comment=bool(override.get("userComment")),
                outcome_timestamp=_timestamp(item["outcomeTimestamp"], f"{where}.outcomeTimestamp"),
            )
        )
    return entries


def _issued_cards(connection: Connection, card_uuids: set[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    if card_uuids:
        rows = connection.execute(
            sa.select(issued_card, service_call.c.client_iss)
            .join(service_call, service_call.c.id == issued_card.c.call_id)
            .where(issued_card.c.card_uuid.in_(sorted(card_uuids)))
        ).mappings()
        for row in rows:
            found[row["card_uuid"]].append(row)
    return found


def _card_for(
    entry: FeedbackEntry,
    index: int,
    service_id: str,
    client_iss: str | None,
    issued: dict[str, list[Any]],
) -> tuple[Any | None, list[Issue]]:
    """The card this service issued to this client (cards issued to unsigned calls take
    feedback from anyone, as those calls could come from anyone)."""
    where = f"feedback[{index}]"
    candidates = issued.get(entry.card_uuid, [])
    card = next(
        (
            c
            for c in candidates
            if c["service_id"] == service_id and c["client_iss"] in (None, client_iss)
        ),
        None,
    )
    if card is None:
        # Which service or client did get the card is not said: it is not the caller's.
        return None, [
            Issue(
                f"{where}.card: card {entry.card_uuid} was not issued by service {service_id} "
                "to this client",
                f"{where}.card",
                code="not-found",
            )
        ]
    known = set(card["suggestion_uuids"])
    issues = [
        Issue(
            f"{where}.acceptedSuggestions[{i}].id: suggestion {s} is not one of card "
            f"{entry.card_uuid}'s suggestions",
            f"{where}.acceptedSuggestions[{i}].id",
            code="not-found",
        )
        for i, s in enumerate(entry.accepted_suggestions)
        if s not in known
    ]
    return card, issues


def store_feedback(
    store: Store,
    *,
    service_id: str,
    client_iss: str | None,
    entries: Sequence[FeedbackEntry],
    received_at: datetime,
) -> int:
    """Check every entry against the cards ``service_id`` issued and store them all, or
    raise ``BadRequest`` and store none. Returns the number stored."""
    with store.transaction() as connection:
        issued = _issued_cards(connection, {e.card_uuid for e in entries})
        rows, issues = [], []
        for index, entry in enumerate(entries):
            card, problems = _card_for(entry, index, service_id, client_iss, issued)
            issues += problems
            if card is not None and not problems:
                rows.append(
                    {
                        "received_at": received_at,
                        "service_id": service_id,
                        "client_iss": client_iss,
                        "card_id": card["id"],
                        "card_uuid": entry.card_uuid,
                        "outcome": entry.outcome,
                        "accepted_suggestions": list(entry.accepted_suggestions),
                        "override_system": entry.override_system,
                        "override_code": entry.override_code,
                        "override_display": entry.override_display,
                        "has_user_comment": entry.has_user_comment,
                        "outcome_timestamp": entry.outcome_timestamp,
                    }
                )
        if issues:
            raise BadRequest(issues)
        if rows:
            connection.execute(feedback.insert(), rows)
        return len(rows)


@dataclass(frozen=True, slots=True)
class RuleStats:
    rule: str  # the decision's rule id, or "(no decision: <card type>)"
    cards_issued: int
    feedback: int
    accepted: int
    overridden: int

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.feedback if self.feedback else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.feedback if self.feedback else None


@dataclass(frozen=True, slots=True)
class ReasonStats:
    system: str | None
    code: str | None  # None: overridden with a comment only
    display: str | None
    overridden: int
    share: float  # of all overrides in the period


@dataclass(frozen=True, slots=True)
class FeedbackStats:
    since: date | None
    rules: tuple[RuleStats, ...]
    reasons: tuple[ReasonStats, ...]


def _rule_label(rule_id: str | None, card_type: str | None) -> str:
    return rule_id if rule_id else f"(no decision: {card_type or 'card'})"


def feedback_stats(store: Store, since: datetime | None = None) -> FeedbackStats:
    """Acceptance and override rates per rule, and overrides per reason.

    Rates are shares of the feedback entries received about a rule's cards (a card may
    get several); cards issued counts the cards recorded in the same period, so cards
    nobody gave feedback on show up as the difference. ``since`` filters feedback by
    ``outcomeTimestamp`` and cards by the time of the call that issued them.
    """
    with store.reading() as connection:
        rules = _rule_stats(connection, since)
        reasons = _reason_stats(connection, since)
    return FeedbackStats(since=since.date() if since else None, rules=rules, reasons=reasons)


def _rule_stats(connection: Connection, since: datetime | None) -> tuple[RuleStats, ...]:
    """Cards issued and feedback by outcome, per rule (or card type without a decision)."""
    card_rule = (
        sa.select(
            issued_card.c.id.label("card_id"),
            issued_card.c.card_type,
            issued_card.c.call_id,
            decision.c.rule_id,
        )
        .outerjoin(decision, decision.c.id == issued_card.c.decision_id)
        .subquery()
    )
    issued_query = (
        sa.select(card_rule.c.rule_id, card_rule.c.card_type, sa.func.count())
        .select_from(card_rule.join(service_call, service_call.c.id == card_rule.c.call_id))
        .group_by(card_rule.c.rule_id, card_rule.c.card_type)
    )
    feedback_query = (
        sa.select(card_rule.c.rule_id, card_rule.c.card_type, feedback.c.outcome, sa.func.count())
        .select_from(feedback.join(card_rule, card_rule.c.card_id == feedback.c.card_id))
        .group_by(card_rule.c.rule_id, card_rule.c.card_type, feedback.c.outcome)
    )
    if since is not None:
        issued_query = issued_query.where(service_call.c.recorded_at >= since)
        feedback_query = feedback_query.where(feedback.c.outcome_timestamp >= since)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rule_id, card_type, count in connection.execute(issued_query):
        counts[_rule_label(rule_id, card_type)]["issued"] += count
    for rule_id, card_type, outcome, count in connection.execute(feedback_query):
        counts[_rule_label(rule_id, card_type)][outcome] += count
    return tuple(
        RuleStats(
            rule=label,
            cards_issued=c["issued"],
            feedback=c["accepted"] + c["overridden"],
            accepted=c["accepted"],
            overridden=c["overridden"],
        )
        for label, c in sorted(counts.items())
    )


def _reason_stats(connection: Connection, since: datetime | None) -> tuple[ReasonStats, ...]:
    """Overrides per reason coding, most frequent first, each with its share."""
    reason_query = (
        sa.select(
            feedback.c.override_system,
            feedback.c.override_code,
            sa.func.max(feedback.c.override_display),
            sa.func.count(),
        )
        .where(feedback.c.outcome == "overridden")
        .group_by(feedback.c.override_system, feedback.c.override_code)
    )
    if since is not None:
        reason_query = reason_query.where(feedback.c.outcome_timestamp >= since)
    reasons = connection.execute(reason_query).all()
    total_overrides = sum(count for *_, count in reasons)
    return tuple(
        sorted(
            (
                ReasonStats(
                    system=system,
                    code=code,
                    display=display,
                    overridden=count,
                    share=count / total_overrides,
                )
                for system, code, display, count in reasons
            ),
            key=lambda r: (-r.overridden, r.code or ""),
        )
    )
