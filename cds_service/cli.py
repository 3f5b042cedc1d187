"""Command line of the service.

    infusion-pump-cds serve [--host H] [--port P] [--workers N]
    infusion-pump-cds evaluate REQUEST.json
    infusion-pump-cds policy show [--format text|markdown|json] [--width N]
    infusion-pump-cds audit show COVERAGE-ASSERTION-ID [--json]
    infusion-pump-cds audit list [--since DATE] [--until DATE] [--outcome O] [--rule R] [--json]
    infusion-pump-cds audit purge [--before DATE] [--dry-run]
    infusion-pump-cds feedback stats [--since DATE] [--json]
    infusion-pump-cds fhir load PATH --fhir-server URL [--token T] [--service-data-only]
    infusion-pump-cds try --fhir-server URL --patient ID --order E0784 --drug insulin [...]

``audit`` and ``feedback`` read the database ``CDS_DATABASE_URL`` names (default: the
SQLite file in the instance folder), as the service does.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from cds_service.feedback import FeedbackStats
    from cds_service.store import Store

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # the subcommands

_T = TypeVar("_T")
OUTCOMES = ("covered", "not-covered", "conditional", "indeterminate")


def _serve(args: argparse.Namespace) -> int:
    # Cooperative sockets first: the app is built here, before gunicorn forks the workers.
    from cds_service.serving import patch_for_cooperative_io

    patch_for_cooperative_io()

    from cds_service import operations
    from cds_service.settings import Settings

    settings = Settings.load()  # read and checked once, for the server and the app
    log_format = operations.configure_logging(settings)
    operations.prepare_multiprocess_metrics()  # before the app creates its metrics

    from cds_service.app import create_app, preload, warm_up_master, warm_up_worker
    from cds_service.serving import run, serving_options

    preload()  # before the fork: no worker's first call loads models or schemas
    application = create_app(settings)
    warm_up_master(application)  # what calls build lazily, built once for every worker
    options = serving_options(settings, host=args.host, port=args.port, workers=args.workers)
    options["logconfig_dict"] = operations.gunicorn_log_config(log_format)
    options["child_exit"] = operations.worker_exited
    # After the fork, before it accepts connections: each worker decides a built-in call.
    options["post_worker_init"] = lambda _worker: warm_up_worker(application)
    run(application, settings, options)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cds_service.app import create_app

    try:
        body = Path(args.request).read_bytes()
    except OSError as exc:
        print(f"evaluate: cannot read {args.request}: {exc.strerror}", file=sys.stderr)
        return 2
    # A dry run, unsigned: its decisions go to a throwaway in-memory audit trail, not the
    # real one.
    app = create_app({"DATABASE_URL": "sqlite://", "AUTH": "optional"})
    try:
        parsed = json.loads(body)
    except ValueError:  # not JSON: the service's own answer to it (400) is what prints
        parsed = None
    service_id = args.service or _service_for(parsed)
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
    from cds_service.audit_report import render_decision, with_criterion_text
    from coverage_policy.loader import load_policy

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
    policy = load_policy()
    decisions = with_criterion_text(decisions, policy)
    if args.json:
        print(
            json.dumps(
                {"coverage_assertion_id": args.assertion_id, "decisions": decisions}, indent=2
            )
        )
        return 0
    print(f"coverage-assertion-id {args.assertion_id}: {len(decisions)} decision(s)")
    for item in decisions:
        print(render_decision(item, policy))
    return 0


def _audit_list(args: argparse.Namespace) -> int:
    from cds_service.audit_report import DecisionQuery, list_decisions, render_decision_list

    query = DecisionQuery(
        since=args.since, until=args.until, outcome=args.outcome, rule=args.rule, limit=args.limit
    )
    try:
        rows = _read_store(lambda store: list_decisions(store, query))
    except _DatabaseUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(
        json.dumps({"decisions": rows}, indent=2)
        if args.json
        else render_decision_list(rows, query)
    )
    return 0


def _audit_purge(args: argparse.Namespace) -> int:
    from cds_service.retention import (
        PurgeCounts,
        purge_audit,
        purge_expired_jwt_ids,
        retention_cutoff,
    )
    from cds_service.settings import Settings

    now = datetime.now(UTC)
    before = args.before or retention_cutoff(Settings.load(), now)

    def purge(store: Store) -> PurgeCounts:
        counts = purge_audit(store, before, dry_run=args.dry_run)
        expired = purge_expired_jwt_ids(store, now, dry_run=args.dry_run)
        return counts + PurgeCounts(expired_jwt_ids=expired)

    try:
        counts = _read_store(purge)
    except _DatabaseUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {counts.service_calls} service call(s) recorded before {before.isoformat()}: "
        f"{counts.decisions} decision(s), {counts.criteria} criterion result(s), "
        f"{counts.cards} card(s), {counts.feedback} feedback entry(ies); "
        f"{counts.expired_jwt_ids} expired JWT id(s)"
    )
    return 0


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return number


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


def _fhir_load(args: argparse.Namespace) -> int:
    from cds_service.fhir_load import LoadFailed, load_path, service_reads, summary

    try:
        result = load_path(
            Path(args.path),
            args.fhir_server,
            token=args.token,
            keep=service_reads if args.service_data_only else (lambda resource: True),
        )
    except LoadFailed as exc:
        print(f"fhir load: {exc}", file=sys.stderr)
        return 2
    for line in summary(result, args.fhir_server):
        print(line)
    return 1 if result.refused else 0


class _OrderAction(argparse.Action):
    """``--order``, ``--drug`` and ``--route`` build one list of orders: each ``--order``
    starts one; a ``--drug`` or ``--route`` goes with the order before it (or starts a
    drug-only order when that one already has its drug)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        orders: list[dict[str, str]] = list(getattr(namespace, "orders", None) or [])
        field = self.dest
        if field == "hcpcs" or not orders or field in orders[-1]:
            if field == "route" and orders and "route" not in orders[-1]:
                orders[-1][field] = values
            else:
                orders.append({field: values})
        else:
            orders[-1][field] = values
        namespace.orders = orders


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _try(args: argparse.Namespace) -> int:
    from cds_service.try_as_ehr import (
        OrderSpec,
        TryFailed,
        TryRequest,
        render_json,
        render_result,
        run_try,
    )

    request = TryRequest(
        fhir_server=args.fhir_server,
        patient=args.patient,
        orders=[OrderSpec(**order) for order in args.orders or []],
        token=args.token,
        encounter=args.encounter,
        user=args.user,
        crd_version=args.crd_version,
        prefetch=not args.no_prefetch,
        service_url=args.service,
        as_of=args.as_of,
    )
    try:
        result = run_try(request)
    except TryFailed as exc:
        print(f"try: {exc}", file=sys.stderr)
        return 2
    print(render_json(result) if args.json else render_result(result, request))
    return 0 if result.status == 200 else 1


def _service_for(body: Any) -> str:
    from hooks import SERVICES

    hook = body.get("hook") if isinstance(body, dict) else None
    for service in SERVICES.values():
        if service.hook == hook:
            return service.id
    return next(iter(SERVICES))


def _add_serve(commands: _Commands) -> None:
    """Add the ``serve`` command: the service under gunicorn."""
    serve = commands.add_parser(
        "serve", help="run the service with gunicorn (gevent workers, safe against slow clients)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--workers", type=int, default=2, help="worker processes (default 2, one per core)"
    )
    serve.set_defaults(run=_serve)


def _add_evaluate(commands: _Commands) -> None:
    """Add the ``evaluate`` command: a request's response without a server."""
    evaluate = commands.add_parser("evaluate", help="print the response a request would get")
    evaluate.add_argument("request", help="a CDS Hooks request body (JSON file)")
    evaluate.add_argument("--service", help="service id (default: the one for the request's hook)")
    evaluate.set_defaults(run=_evaluate)


def _add_policy(commands: _Commands) -> None:
    """Add the ``policy show`` command."""
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


def _add_audit(commands: _Commands) -> None:
    """Add the ``audit show|list|purge`` commands."""
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
    audit_list = audit.add_parser("list", help="find decisions, newest first")
    audit_list.add_argument("--since", type=_since, metavar="DATE", help="recorded on or after")
    audit_list.add_argument("--until", type=_since, metavar="DATE", help="recorded before")
    audit_list.add_argument("--outcome", choices=OUTCOMES, help="only this outcome")
    audit_list.add_argument("--rule", metavar="RULE-ID", help="only this rule (e.g. EIP-CSII)")
    audit_list.add_argument(
        "--limit", type=_positive, default=50, help="at most this many (default 50)"
    )
    audit_list.add_argument("--json", action="store_true", help="print JSON")
    audit_list.set_defaults(run=_audit_list)
    audit_purge = audit.add_parser(
        "purge", help="remove audit records older than a date (default: CDS_AUDIT_RETENTION_DAYS)"
    )
    audit_purge.add_argument(
        "--before", type=_since, metavar="DATE", help="remove service calls recorded before DATE"
    )
    audit_purge.add_argument(
        "--dry-run", action="store_true", help="only count what would be removed"
    )
    audit_purge.set_defaults(run=_audit_purge)


def _add_feedback(commands: _Commands) -> None:
    """Add the ``feedback stats`` command."""
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


def _add_fhir(commands: _Commands) -> None:
    """Add the ``fhir load`` command."""
    fhir = commands.add_parser("fhir", help="work with a FHIR server").add_subparsers(
        dest="fhir_command", required=True
    )
    load = fhir.add_parser(
        "load", help="load FHIR Bundles or NDJSON into a FHIR server (urn:uuid references resolved)"
    )
    load.add_argument("path", metavar="PATH", help="a .json/.ndjson file or a folder of them")
    load.add_argument("--fhir-server", required=True, metavar="URL", help="its base URL")
    load.add_argument("--token", help="bearer token for the FHIR server")
    load.add_argument(
        "--service-data-only",
        action="store_true",
        help="only what the service's prefetch reads (faster on in-memory servers)",
    )
    load.set_defaults(run=_fhir_load)


def _add_try(commands: _Commands) -> None:
    """Add the ``try`` command: act as the EHR against a FHIR server."""
    try_ = commands.add_parser(
        "try",
        help="act as the EHR: sign orders for a patient on a FHIR server, print the answer",
        description="Sign pump and drug orders for a patient on a FHIR server the way an EHR "
        "does, and print the decision per order and the cards. Example: infusion-pump-cds try "
        "--fhir-server http://127.0.0.1:8090/fhir --patient ID --order E0784 --drug insulin",
    )
    try_.add_argument("--fhir-server", required=True, metavar="URL", help="the EHR's FHIR base URL")
    try_.add_argument("--patient", required=True, metavar="ID", help="the patient's id there")
    try_.add_argument(
        "--order", dest="hcpcs", action=_OrderAction, metavar="HCPCS", help="a pump (repeatable)"
    )
    try_.add_argument(
        "--drug", dest="drug", action=_OrderAction, metavar="NAME", help="the drug the pump gives"
    )
    try_.add_argument(
        "--route",
        dest="route",
        action=_OrderAction,
        metavar="ROUTE",
        help="the drug's route (subcutaneous, intravenous, intrathecal, epidural, "
        "intra-arterial, intraperitoneal); a default per drug otherwise",
    )
    try_.add_argument("--encounter", metavar="ID", help="the current encounter's id")
    try_.add_argument("--user", default="Practitioner/try-clinician", help="context.userId")
    try_.add_argument("--crd-version", choices=("2.0", "2.1", "2.2"), help="CRD version asked for")
    try_.add_argument("--token", help="bearer token for the FHIR server")
    try_.add_argument(
        "--no-prefetch", action="store_true", help="send no prefetch: the service fetches it"
    )
    try_.add_argument("--service", metavar="URL", help="a running service (default: in-process)")
    try_.add_argument(
        "--as-of", type=_date, metavar="DATE", help="decide as on DATE (in-process only)"
    )
    try_.add_argument("--json", action="store_true", help="print the raw response")
    try_.set_defaults(run=_try, orders=[])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infusion-pump-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_serve,
        _add_evaluate,
        _add_policy,
        _add_audit,
        _add_feedback,
        _add_fhir,
        _add_try,
    ):
        add_command(commands)
    args = parser.parse_args(argv)
    if args.command != "serve":
        # The service's own log lines are for operators of a running service; a command
        # reports what concerns its user itself.
        logging.getLogger().addHandler(logging.NullHandler())
    return int(args.run(args))


def run_command() -> NoReturn:
    """The ``infusion-pump-cds`` command: ``main`` with this process's arguments, then exit."""
    code = main()
    # The process ends here: its last garbage collections need not trace everything it
    # built (modules, policy, app); they took a fifth of an ``evaluate`` run.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run_command()
