"""Command line: ``infusion-pump-cds serve``, ``infusion-pump-cds evaluate REQUEST.json``
and ``infusion-pump-cds policy show``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from cds_service.app import create_app

    application = create_app()

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("timeout", 30)
            self.cfg.set("accesslog", "-")

        def load(self) -> Any:
            return application

    _Server().run()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cds_service.app import create_app

    body = Path(args.request).read_bytes()
    app = create_app({"AUTH": "optional"} if args.no_auth else None)
    service_id = args.service or _service_for(json.loads(body))
    client = app.test_client()
    response = client.post(
        f"/cds-services/{service_id}", data=body, content_type="application/json"
    )
    print(json.dumps(response.get_json(), indent=2))
    return 0 if response.status_code == 200 else 1


def _policy_show(args: argparse.Namespace) -> int:
    from cds_service.policy_report import policy_report, render_report
    from coverage_policy.loader import load_policy

    sys.stdout.write(render_report(policy_report(load_policy()), args.format, args.width))
    return 0


def _width(value: str) -> int:
    from cds_service.policy_report import MIN_WIDTH

    width = int(value)
    if width < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"at least {MIN_WIDTH} columns")
    return width


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
    serve = commands.add_parser("serve", help="run the service with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
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
    show.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                      help="text: a table wrapped to --width; markdown: a GitHub table; json")
    show.add_argument("--width", type=_width, default=100,
                      help="text width in columns (default 100)")
    show.set_defaults(run=_policy_show)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
