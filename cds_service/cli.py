"""Command line of the service.

    infusion-pump-cds serve [--host H] [--port P] [--workers N]
    infusion-pump-cds evaluate REQUEST.json
    infusion-pump-cds policy show [--format text|markdown|json] [--width N]
    infusion-pump-cds audit show COVERAGE-ASSERTION-ID [--json]
    infusion-pump-cds feedback stats [--since DATE] [--json]

``audit`` and ``feedback`` read the database ``CDS_DATABASE_URL`` names (default: the
SQLite file in the instance folder), as the service does.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from cds_service.feedback import FeedbackStats
    from cds_service.store import Store

_T = TypeVar("_T")


def _serve(args: argparse.Namespace) -> int:
    # Cooperative sockets first: the app is built here, before gunicorn forks the workers.
    from cds_service.serving import patch_for_cooperative_io

    patch_for_cooperative_io()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from cds_service.app import create_app, preload
    from cds_service.config import load_settings
    from cds_service.serving import run, serving_options

    settings = load_settings()
    preload()  # before the fork: no worker's first call loads models or schemas
    application = create_app()
    options = serving_options(settings, host=args.host, port=args.port, workers=args.workers)
    run(application, settings, options)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cds_service.app import create_app

    body = Path(args.request).read_bytes()
    # A dry run: its decisions go to a throwaway in-memory audit trail, not the real one.
    settings: dict[str, Any] = {"DATABASE_URL": "sqlite://"}
    if args.no_auth:
        settings["AUTH"] = "optional"
    app = create_app(settings)
    service_id = args.service or _service_for(json.loads(body))
    client = app.test_client()
    response = client.post(
        f"/cds-services/{service_id}", data=body, content_type="application/json"
    )
    print(json.dumps(response.get_json(), indent=2))
    app.extensions["cds_store"].dispose()
    return 0 if response.status_code == 200 else 1


def _policy_show(args: argparse.Namespace) -> int:
    from coverage_policy.loader import load_policy
    from coverage_policy.report import policy_report, render_report

    sys.stdout.write(render_report(policy_report(load_policy()), args.format, args.width))
    return 0


def _width(value: str) -> int:
    from coverage_policy.report import MIN_WIDTH

    width = int(value)
    if width < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"at least {MIN_WIDTH} columns")
    return width


class _DatabaseUnavailable(Exception):
    """The audit/feedback database could not be read (the message says which)."""


def _read_store(query: Callable[[Store], _T]) -> _T:
    """Run ``query`` on the service's own store (same ``CDS_DATABASE_URL`` and instance
    folder, migrated), then close it."""
    from sqlalchemy.exc import SQLAlchemyError

    from cds_service.app import create_app

    store: Store = create_app().extensions["cds_store"]
    try:
        return query(store)
    except SQLAlchemyError as exc:
        raise _DatabaseUnavailable(
            f"database {store.describe()} unavailable: {type(exc).__name__}"
        ) from exc
    finally:
        store.dispose()


def _audit_show(args: argparse.Namespace) -> int:
    from cds_service.audit import audit_for_assertion

    try:
        decisions = _read_store(lambda store: audit_for_assertion(store, args.assertion_id))
    except _DatabaseUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    if not decisions:
        print(
            f"no decision recorded with coverage-assertion-id {args.assertion_id}", file=sys.stderr
        )
        return 1
    if args.json:
        print(
            json.dumps(
                {"coverage_assertion_id": args.assertion_id, "decisions": decisions}, indent=2
            )
        )
        return 0
    print(f"coverage-assertion-id {args.assertion_id}: {len(decisions)} decision(s)")
    for item in decisions:
        print(_format_decision(item))
    return 0


def _format_decision(item: dict[str, Any]) -> str:
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
        "  criteria:",
    ]
    for c in item["criteria"]:
        role = "deciding" if c["deciding"] else "advisory"
        evidence = ", ".join(c["evidence"]) or "no evidence"
        truth = c["truth"] if c["checked"] else f"{c['truth']}, not checked (data not retrieved)"
        lines.append(
            f"    {c['rule_id']} ({c['rule_kind']}, {role}) {c['criterion_id']}: "
            f"{truth}; evidence: {evidence}"
        )
    lines.append("  cards issued in the same response:")
    for card in item["cards"]:
        about = "about this decision" if card["about_this_decision"] else "other"
        lines.append(f"    {card['uuid']}  {card['type']}  {card['indicator']}  ({about})")
        lines += [f"      suggestion {s}" for s in card["suggestions"]]
    return "\n".join(lines)


def _since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _feedback_stats(args: argparse.Namespace) -> int:
    from cds_service.feedback import feedback_stats

    try:
        stats = _read_store(lambda store: feedback_stats(store, args.since))
    except _DatabaseUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(_stats_json(stats), indent=2) if args.json else _format_stats(stats))
    return 0


def _stats_json(stats: FeedbackStats) -> dict[str, Any]:
    return {
        "since": stats.since.isoformat() if stats.since else None,
        "rules": [
            {
                "rule": r.rule,
                "cards_issued": r.cards_issued,
                "feedback": r.feedback,
                "accepted": r.accepted,
                "overridden": r.overridden,
                "acceptance_rate": r.acceptance_rate,
                "override_rate": r.override_rate,
            }
            for r in stats.rules
        ],
        "override_reasons": [
            {
                "system": r.system,
                "code": r.code,
                "display": r.display,
                "overridden": r.overridden,
                "share": r.share,
            }
            for r in stats.reasons
        ],
    }


def _format_stats(stats: FeedbackStats) -> str:
    period = f"since {stats.since.isoformat()}" if stats.since else "all time"
    rows = [
        ("rule", "cards issued", "feedback", "accepted", "overridden", "acceptance", "override")
    ]
    rows += [
        (
            r.rule,
            str(r.cards_issued),
            str(r.feedback),
            str(r.accepted),
            str(r.overridden),
            _rate(r.acceptance_rate),
            _rate(r.override_rate),
        )
        for r in stats.rules
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"Feedback per rule ({period}; rates are shares of feedback entries)"]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines += ["", "Override reasons"]
    if not stats.reasons:
        lines.append("  (no overrides)")
    for r in stats.reasons:
        reason = (
            f"{r.code} ({r.display or 'no display'}) [{r.system}]" if r.code else "(comment only)"
        )
        lines.append(f"  {r.overridden:>6}  {r.share:6.1%}  {reason}")
    return "\n".join(lines)


def _service_for(body: Any) -> str:
    from hooks import SERVICES

    hook = body.get("hook") if isinstance(body, dict) else None
    for service in SERVICES.values():
        if service.hook == hook:
            return service.id
    return next(iter(SERVICES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infusion-pump-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the service with gunicorn (gevent workers, safe against slow clients)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--workers", type=int, default=2, help="worker processes (default 2, one per core)"
    )
    serve.set_defaults(run=_serve)
    evaluate = commands.add_parser("evaluate", help="print the response a request would get")
    evaluate.add_argument("request", help="a CDS Hooks request body (JSON file)")
    evaluate.add_argument("--service", help="service id (default: the one for the request's hook)")
    evaluate.add_argument("--no-auth", action="store_true", default=True, help=argparse.SUPPRESS)
    evaluate.set_defaults(run=_evaluate)
    policy = commands.add_parser("policy", help="the coverage policy the service decides by")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    show = policy_commands.add_parser(
        "show",
        help="print every rule and criterion with its citation, evidence and documentation",
    )
    show.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="text: a table wrapped to --width; markdown: a GitHub table; json",
    )
    show.add_argument(
        "--width", type=_width, default=100, help="text width in columns (default 100)"
    )
    show.set_defaults(run=_policy_show)
    audit = commands.add_parser("audit", help="read the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    audit_show = audit.add_parser("show", help="what was decided for an order and why")
    audit_show.add_argument(
        "assertion_id",
        metavar="COVERAGE-ASSERTION-ID",
        help="the coverage-assertion-id of a coverage-information extension",
    )
    audit_show.add_argument("--json", action="store_true", help="print JSON")
    audit_show.set_defaults(run=_audit_show)
    feedback = commands.add_parser("feedback", help="what clinicians did with the cards")
    stats = feedback.add_subparsers(dest="feedback_command", required=True).add_parser(
        "stats", help="acceptance and override rates per rule and per override reason"
    )
    stats.add_argument(
        "--since",
        type=_since,
        metavar="DATE",
        help="only feedback with outcomeTimestamp on or after DATE (YYYY-MM-DD)",
    )
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_feedback_stats)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
