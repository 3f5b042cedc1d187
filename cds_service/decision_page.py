"""The decision page a coverage card links to: the full trace of one call's decisions.

Served from the audit trail, so it shows no more than the audit holds (identifiers,
codes, truths, FHIR references; no names, values or dates of the record), with the
policy's own wording for each rule and criterion. Its address carries an unguessable id
issued with the call, and it expires after ``CDS_DECISION_PAGE_TTL_S``. A page for
people: errors are HTML pages too, and nothing about it is cached or sent on as a
referrer.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, render_template
from sqlalchemy.exc import SQLAlchemyError

from cds_service.audit import audit_for_decision_page
from cds_service.settings import current_settings
from coverage_policy.engine import OUTCOME_OF_TRUTH, truth_of
from coverage_policy.model import Outcome, Policy, Truth
from coverage_policy.report import guidance_message
from hooks.cards import card_text

logger = logging.getLogger(__name__)

blueprint = Blueprint("decision_page", __name__)

DECISION_PAGE_PATH = "/decisions/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def new_decision_page_token() -> str:
    """An unguessable page id (192 random bits)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class CriterionRow:
    id: str
    text: str
    citations: str
    truth: str
    deciding: bool
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSection:
    id: str
    title: str
    kind: str
    message: str
    criteria: tuple[CriterionRow, ...]


def _criterion_row(row: Mapping[str, Any], policy: Policy) -> CriterionRow:
    criterion = policy.criteria.get(row["criterion_id"])
    truth = row["truth"] if row["checked"] else "not-checked"
    return CriterionRow(
        id=row["criterion_id"],
        text=criterion.text if criterion else row["criterion_id"],
        citations="; ".join(c.render(policy.sources) for c in criterion.citations)
        if criterion
        else "",
        truth=card_text()["decision_page"]["truth"][truth],
        deciding=row["deciding"],
        evidence=tuple(row["evidence"]),
    )


def _sections(item: Mapping[str, Any], policy: Policy) -> list[RuleSection]:
    """One section per rule the decision recorded, each with the policy's message for
    the truth its criteria give (a guidance message also depends on the indication's)."""
    by_rule: dict[str, list[Mapping[str, Any]]] = {}
    for row in item["criteria"]:
        by_rule.setdefault(row["rule_id"], []).append(row)
    truths = {c["criterion_id"]: Truth(c["truth"]) for c in item["criteria"]}
    rules = {rule_id: policy.rules_by_id.get(rule_id) for rule_id in by_rule}
    indication = rules.get(item["rule_id"])
    indication_outcome = (
        OUTCOME_OF_TRUTH[truth_of(indication.decides, truths)]
        if indication
        else Outcome.CONDITIONAL
    )
    sections = []
    for rule_id, rows in by_rule.items():
        rule, kind = rules[rule_id], rows[0]["rule_kind"]
        if rule is None:  # decided under a policy version that no longer has this rule
            message = ""
        elif kind == "guidance":
            message = guidance_message(rule, truth_of(rule.decides, truths), indication_outcome)
        else:
            message = rule.messages[OUTCOME_OF_TRUTH[truth_of(rule.decides, truths)].value]
        title = rule.title if rule else rule_id
        criteria = tuple(_criterion_row(row, policy) for row in rows)
        sections.append(RuleSection(rule_id, title, kind, message, criteria))
    return sections


def _page(template: str, status: int, **values: Any) -> tuple[Response, int]:
    response = Response(render_template(template, **values), mimetype="text/html")
    response.headers.update(_HEADERS)
    return response, status


@blueprint.get(f"{DECISION_PAGE_PATH}<token>")
def show_decision_page(token: str) -> tuple[Response, int]:
    if not _TOKEN.fullmatch(token):
        return _page("decision_page_missing.html", 404)
    settings = current_settings()
    now = current_app.extensions["cds_clock"]()
    since = now - timedelta(seconds=settings.decision_page_ttl_s)
    try:
        decisions = audit_for_decision_page(current_app.extensions["cds_store"], token, since)
    except SQLAlchemyError as exc:
        logger.error("decision page unavailable: database error (%s)", type(exc).__name__)
        return _page("decision_page_missing.html", 503, unavailable=True)
    if not decisions:
        return _page("decision_page_missing.html", 404)
    policy = current_app.extensions["cds_policy"]
    views = [{**item, "sections": _sections(item, policy)} for item in decisions]
    return _page(
        "decision_page.html",
        200,
        decisions=views,
        policy=policy,
        payer=settings.payer_name,
    )
