"""``make demo``: everything needed to try the service, on this machine, in one command.

    .venv/bin/python -m demo.run [--port 8080] [--fhir-port 8090] [--page-port 8070]
                                 [--smart-port 8060]

Starts, on 127.0.0.1 only:

1. the local FHIR server (``demo/fhir_server``: Medplum's FHIR router, in memory, no
   token needed), loaded with one patient per order-sign fixture and, when
   ``../shared/synthea-r4`` is there, every Synthea record, each with an active Medicare
   Advantage Coverage;
2. the SMART authorization server (``demo/smart_server.py``) in front of that FHIR
   server, the EHR side of a SMART App Launch: it signs everyone in as the demo clinician
   and allows every request without asking (auto-consent);
3. the service (``infusion-pump-cds serve``, development settings: unsigned calls
   accepted, loopback FHIR servers allowed, CORS for the CDS Hooks sandbox and the page;
   the documentation app registered with the SMART server, ``CDS_SMART_CLIENTS``, and its
   link on the documentation card, ``CDS_DTR_CARD_LINK=on``);
4. the "try it" page (``demo/try_page.py``), an order screen that signs orders the way an
   EHR does and launches the card's "Complete the documentation" link as an EHR launch.

Then it signs one order per fixture patient (until it has one patient per outcome),
prints those patients with the command that reproduces each, the URLs, and how to point
the public CDS Hooks sandbox at the service; Ctrl-C stops everything it started. A port
of 0 picks a free one.

The documentation loop: sign a ``conditional`` order on the page, click "Complete the
documentation" on its card, answer in the app (the sign-in is automatic), save, and sign
the order again to see the new decision.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cds_service.fhir_load import LoadFailed, ProgressBar, load_resources
from cds_service.try_as_ehr import OrderSpec, TryFailed, TryRequest, order_decisions, run_try
from demo.data import SYNTHEA, DemoPatient, fixture_patients, synthea_patients
from demo.smart_server import SmartAuthorizationServer, start_authorization_server

ROOT = Path(__file__).resolve().parent.parent
FHIR_SERVER = ROOT / "demo" / "fhir_server" / "server.mjs"
OUTCOMES = ("covered", "conditional", "not-covered")
START_TIMEOUT_S = 60.0
SANDBOX = "https://sandbox.cds-hooks.org"
SMART_CLIENT_ID = "demo-documentation-app"  # the documentation app at the SMART server


class DemoFailed(Exception):
    """The demo cannot start (the message says why)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, process: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            if process.poll() is not None:
                raise DemoFailed(f"{what} exited with status {process.returncode}") from None
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what} did not answer at {url}") from None
            time.sleep(0.2)


@dataclass
class Started:
    """What the demo runs; ``stop`` ends it all."""

    processes: list[tuple[str, subprocess.Popen[Any]]]
    page: Any = None  # the page's werkzeug server
    smart: Any = None  # the SMART authorization server's werkzeug server

    def stop(self) -> None:
        if self.page is not None:
            self.page.shutdown()
        if self.smart is not None:
            self.smart.shutdown()
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def exited(self) -> str | None:
        for name, process in self.processes:
            if process.poll() is not None:
                return f"{name} exited with status {process.returncode}"
        return None


def start_fhir_server(port: int, started: Started) -> str:
    node = "node"
    if not (FHIR_SERVER.parent / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise DemoFailed("demo/fhir_server/node_modules is missing: run `make demo` (npm ci)")
    try:
        process = subprocess.Popen(
            [node, str(FHIR_SERVER), "--port", str(port)],
            cwd=FHIR_SERVER.parent,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
        )
    except FileNotFoundError as exc:
        raise DemoFailed("node (Node.js 20.19+) is needed for the FHIR server") from exc
    started.processes.append(("the FHIR server", process))
    base = f"http://127.0.0.1:{port}/fhir"
    _wait_for(f"{base}/metadata", process, "the FHIR server")
    return base


def start_smart_server(port: int, fhir_base: str, started: Started) -> SmartAuthorizationServer:
    """The SMART authorization server in front of the FHIR server (no token), auto-consent."""
    try:
        smart, http = start_authorization_server(fhir_base, "", port=port, auto_consent=True)
    except OSError as exc:
        raise DemoFailed(f"the SMART authorization server cannot listen on {port}: {exc}") from exc
    started.smart = http
    return smart


def service_settings(service: str, page_origin: str, smart_iss: str) -> dict[str, str]:
    """The service's settings in the demo (development ones, and the documentation app
    registered with the demo's SMART server, its link on the documentation card)."""
    return {
        "CDS_AUTH": "optional",
        "CDS_FHIR_SERVERS": "http://127.0.0.1,http://localhost",
        "CDS_CORS_ORIGINS": f"{SANDBOX},{page_origin}",
        "CDS_PUBLIC_URL": service,
        "CDS_SMART_CLIENTS": json.dumps({smart_iss: {"client_id": SMART_CLIENT_ID}}),
        "CDS_DTR_CARD_LINK": "on",
    }


def start_service(port: int, page_origin: str, smart_iss: str, started: Started) -> str:
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **service_settings(base, page_origin, smart_iss)}
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    started.processes.append(("the service", process))
    _wait_for(f"{base}/healthz", process, "the service")
    return base


def load_patients(fhir_base: str, patients: Sequence[DemoPatient]) -> int:
    """Load every patient's resources; the number of resources written."""
    session = requests.Session()
    written = 0
    bar = ProgressBar(len(patients), unit="patients")
    for number, patient in enumerate(patients, start=1):
        result = load_resources(patient.resources, fhir_base, session=session)
        written += result.total
        bar.update(number)
    bar.close()
    return written


def _outcome(response: Any) -> str:
    decided = order_decisions(response if isinstance(response, dict) else {})
    codes = {str((d["parts"].get("covered") or ["?"])[0]) for d in decided}
    return codes.pop() if len(codes) == 1 else "|".join(sorted(codes)) or "none"


@dataclass(frozen=True)
class Example:
    patient: DemoPatient
    order: OrderSpec
    outcome: str


def find_examples(fhir_base: str, service: str, patients: Sequence[DemoPatient]) -> list[Example]:
    """One fixture patient per outcome, each decided now by the running service."""
    found: dict[str, Example] = {}
    # The insulin pump first: the order most people come to try.
    ordered = sorted(patients, key=lambda p: "e0784-insulin--" not in p.id)
    for patient in ordered:
        if len(found) == len(OUTCOMES):
            break
        if patient.expected in found or patient.expected not in OUTCOMES or not patient.orders:
            continue
        order = patient.orders[0]
        if order.hcpcs is None or order.drug is None:
            continue
        request = TryRequest(
            fhir_server=fhir_base,
            patient=patient.id,
            orders=[order],
            encounter=patient.encounter,
            service_url=service,
        )
        try:
            result = run_try(request)
        except TryFailed:
            continue
        outcome = _outcome(result.response) if result.status == 200 else "error"
        if outcome == patient.expected:
            found[outcome] = Example(patient, order, outcome)
    return [found[o] for o in OUTCOMES if o in found]


def try_command(example: Example, fhir_base: str, service: str) -> str:
    parts = [".venv/bin/infusion-pump-cds", "try", "--fhir-server", fhir_base]
    parts += ["--patient", example.patient.id]
    if example.patient.encounter:
        parts += ["--encounter", example.patient.encounter]
    parts += ["--order", str(example.order.hcpcs), "--drug", str(example.order.drug)]
    if example.order.route:
        parts += ["--route", example.order.route]
    parts += ["--service", service]
    return shlex.join(parts)


def _documentation_app(service: str, smart: SmartAuthorizationServer | None) -> list[str]:
    """Lines about the SMART documentation app and the authorization server it signs in at."""
    if smart is None:
        return []
    return [
        f"  Documentation:    {service}/dtr/launch  (the SMART app; the page launches it",
        "                    from a conditional order's card: 'Complete the documentation')",
        f"  SMART server:     {smart.base}/  (FHIR base, iss: {smart.iss})",
        "                    signs in as the demo clinician, allows every request (auto-consent)",
    ]


def banner(
    examples: Sequence[Example],
    *,
    fhir_base: str,
    service: str,
    page: str,
    patients: int,
    synthea: int,
    smart: SmartAuthorizationServer | None = None,
) -> str:
    lines = [
        "",
        f"Demo running: {patients} patients on the FHIR server "
        f"({patients - synthea} from the fixtures, {synthea} Synthea records).",
        "",
        "Patients worth trying (decided just now):",
    ]
    width = max((len(e.patient.id) for e in examples), default=10)
    for example in examples:
        order = f"{example.order.hcpcs} + {example.order.drug}"
        lines.append(f"  {example.outcome.upper():<12} {example.patient.id:<{width}}  {order}")
        lines.append(f"      {try_command(example, fhir_base, service)}")
    lines += [
        "",
        f"  Try it page:      {page}/",
        f"  Service:          {service}/cds-services  (health {service}/healthz, "
        f"readiness {service}/readyz, metrics {service}/metrics)",
        f"  FHIR server:      {fhir_base}  (e.g. {fhir_base}/Patient?_count=5)",
        *_documentation_app(service, smart),
        "",
        f"CDS Hooks sandbox ({SANDBOX}): in its settings (gear) 'Add CDS Services', enter",
        f"  {service}/cds-services",
        "  Your browser calls the service on this machine (CORS allows the sandbox). The",
        "  sandbox signs with its own key, which this demo does not trust: its calls are",
        "  treated as unsigned (allowed here). Its Rx Sign can only order medications, never",
        "  a pump, so its orders get no cards; use the page above to sign a pump order.",
        "",
        "Audit trail of what the demo decided: .venv/bin/infusion-pump-cds audit list",
        "Press Ctrl-C to stop everything.",
    ]
    return "\n".join(lines)


def start_page(
    port: int,
    service: str,
    fhir_base: str,
    patients: Sequence[DemoPatient],
    started: Started,
    smart: SmartAuthorizationServer | None = None,
) -> str:
    from werkzeug.serving import make_server

    from demo.try_page import create_page

    def launcher(link_url: str, context: dict[str, Any]) -> str:
        assert smart is not None
        return smart.launch_link(link_url, smart.new_launch(context))

    app = create_page(
        service_url=service,
        fhir_server=fhir_base,
        patients=patients,
        launcher=launcher if smart is not None else None,
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="try-page", daemon=True).start()
    started.page = server
    return f"http://127.0.0.1:{server.server_port}"


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    started = Started(processes=[])
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        fhir_port = args.fhir_port or free_port()
        service_port = args.port or free_port()
        page_port = args.page_port or free_port()
        print(f"Starting the FHIR server on 127.0.0.1:{fhir_port} ...", flush=True)
        fhir_base = start_fhir_server(fhir_port, started)
        smart = start_smart_server(args.smart_port, fhir_base, started)
        fixtures = fixture_patients()
        synthea = synthea_patients(Path(args.synthea))
        patients = [*fixtures, *synthea]
        print(f"Loading {len(patients)} patients ...", flush=True)
        load_patients(fhir_base, patients)
        print(
            f"Starting the service on 127.0.0.1:{service_port} ... "
            f"({time.monotonic() - began:.0f} s)",
            flush=True,
        )
        page_origin = f"http://127.0.0.1:{page_port}"
        smart.register(SMART_CLIENT_ID, f"http://127.0.0.1:{service_port}/dtr/callback")
        service = start_service(service_port, page_origin, smart.iss, started)
        page = start_page(page_port, service, fhir_base, patients, started, smart)
        print(f"Deciding an example per outcome ... ({time.monotonic() - began:.0f} s)", flush=True)
        examples = find_examples(fhir_base, service, fixtures)
        print(
            banner(
                examples,
                fhir_base=fhir_base,
                service=service,
                page=page,
                patients=len(patients),
                synthea=len(synthea),
                smart=smart,
            )
            + f"\n(ready in {time.monotonic() - began:.0f} s)",
            flush=True,
        )
        if args.ready_file:
            Path(args.ready_file).write_text(
                json.dumps(
                    {"fhir": fhir_base, "service": service, "page": page, "smart": smart.iss}
                ),
                encoding="utf-8",
            )
        while not stop.wait(0.5):
            problem = started.exited()
            if problem:
                print(f"demo: {problem}; stopping", file=sys.stderr)
                return 1
        print("\nStopping the demo ...", flush=True)
        return 0
    except (DemoFailed, LoadFailed) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        started.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="the service (0: a free port)")
    parser.add_argument("--fhir-port", type=int, default=8090, help="the FHIR server")
    parser.add_argument("--page-port", type=int, default=8070, help="the try-it page")
    parser.add_argument(
        "--smart-port", type=int, default=8060, help="the SMART authorization server"
    )
    parser.add_argument(
        "--synthea", default=str(SYNTHEA), help="folder of Synthea records to load, if present"
    )
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)  # tests: where the URLs go
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
