"""The audit trail for people: finding decisions, and reading one with its criteria's text.

``infusion-pump-cds audit list`` and ``audit show`` print what these functions return.
The audit trail keeps ids, not text; the text of each criterion comes from the policy
the service runs now, and the report says so when that is not the version a decision
was made under.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cds_service.store import Store
from cds_service.tables import decision, service_call
from coverage_policy.model import Policy

DEFAULT_LIMIT = 50


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    """Which decisions ``audit list`` shows: recorded in [since, until), newest first."""

    since: datetime | None = None
    until: datetime | None = None
    outcome: str | None = None
    rule: str | None = None
    limit: int = DEFAULT_LIMIT


def list_decisions(store: Store, query: DecisionQuery) -> list[dict[str, Any]]:
    """The decisions ``query`` selects, newest first, as plain data."""
    statement = (
        sa.select(
            service_call.c.recorded_at,
            service_call.c.service_id,
            service_call.c.hook_instance,
            service_call.c.client_iss,
            decision.c.coverage_assertion_id,
            decision.c.order_references,
            decision.c.policy_version,
            decision.c.rule_id,
            decision.c.outcome,
        )
        .join(service_call, service_call.c.id == decision.c.call_id)
        .order_by(service_call.c.recorded_at.desc(), decision.c.id.desc())
        .limit(query.limit)
    )
    if query.since is not None:
        statement = statement.where(service_call.c.recorded_at >= query.since)
    if query.until is not None:
        statement = statement.where(service_call.c.recorded_at < query.until)
    if query.outcome is not None:
        statement = statement.where(decision.c.outcome == query.outcome)
    if query.rule is not None:
        statement = statement.where(decision.c.rule_id == query.rule)
    with store.reading() as connection:
        rows = connection.execute(statement).mappings().all()
    return [
        {
            "recorded_at": row["recorded_at"].isoformat(),
            "service_id": row["service_id"],
            "hook_instance": row["hook_instance"],
            "client_iss": row["client_iss"],
            "coverage_assertion_id": row["coverage_assertion_id"],
            "orders": list(row["order_references"]),
            "policy_version": row["policy_version"],
            "rule_id": row["rule_id"],
            "outcome": row["outcome"],
        }
        for row in rows
    ]


def render_decision_list(rows: list[dict[str, Any]], query: DecisionQuery) -> str:
    """A table of decisions, one per line, with a heading saying what was asked."""
    asked = [
        f"since {query.since.isoformat()}" if query.since else "",
        f"until {query.until.isoformat()}" if query.until else "",
        f"outcome {query.outcome}" if query.outcome else "",
        f"rule {query.rule}" if query.rule else "",
    ]
    heading = ", ".join(a for a in asked if a) or "all"
    if not rows:
        return f"No decisions recorded ({heading})."
    table = [("recorded at", "outcome", "rule", "coverage-assertion-id", "orders")]
    table += [
        (
            row["recorded_at"][:19].replace("T", " "),
            row["outcome"],
            row["rule_id"],
            row["coverage_assertion_id"] or "-",
            ", ".join(row["orders"]),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    more = f"; the newest {query.limit} shown" if len(rows) == query.limit else ""
    lines = [f"{len(rows)} decision(s), newest first ({heading}{more})"]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    lines.append("`infusion-pump-cds audit show COVERAGE-ASSERTION-ID` tells why.")
    return "\n".join(lines)


def with_criterion_text(decisions: list[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """Each criterion with its ``text`` in the running policy (None if it has none)."""
    for item in decisions:
        for criterion in item["criteria"]:
            known = policy.criteria.get(criterion["criterion_id"])
            criterion["text"] = known.text if known is not None else None
        item["criteria_text_from"] = f"{policy.id} {policy.version}"
    return decisions


def render_decision(item: dict[str, Any], policy: Policy) -> str:
    """One decision of ``audit show``: the call, the rule and outcome, every criterion
    with its truth, evidence and text, and the cards of the same response."""
    timings = item["timings_ms"]
    lines = [
        "",
        f"{item['recorded_at']}  {item['service_id']} ({item['hook']}, CRD {item['crd_version']})",
        f"  hookInstance {item['hook_instance']}  client iss {item['client_iss'] or '(unsigned)'}",
        f"  timings ms: prefetch {timings['prefetch']}, fetch {timings['fetch']}, "
        f"decide {timings['decide']}, total {timings['total']}",
        f"  orders: {', '.join(item['orders'])}",
        f"  policy {item['policy']['id']} version {item['policy']['version']}, "
        f"rule {item['rule_id']}: {item['outcome'].upper()} (as of {item['as_of']})",
    ]
    if (item["policy"]["id"], item["policy"]["version"]) != (policy.id, policy.version):
        lines.append(
            f"  (criterion text from the running policy {policy.id} version {policy.version})"
        )
    lines.append("  criteria:")
    for c in item["criteria"]:
        role = "deciding" if c["deciding"] else "advisory"
        evidence = ", ".join(c["evidence"]) or "no evidence"
        truth = c["truth"] if c["checked"] else f"{c['truth']}, not checked (data not retrieved)"
        lines.append(
            f"    {c['rule_id']} ({c['rule_kind']}, {role}) {c['criterion_id']}: "
            f"{truth}; evidence: {evidence}"
        )
        text = c.get("text")
        lines.append(f"        {text if text else '(not in the running policy)'}")
    lines.append("  cards issued in the same response:")
    for card in item["cards"]:
        about = "about this decision" if card["about_this_decision"] else "other"
        lines.append(f"    {card['uuid']}  {card['type']}  {card['indicator']}  ({about})")
        lines += [f"      suggestion {s}" for s in card["suggestions"]]
    return "\n".join(lines)
