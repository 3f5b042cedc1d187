"""Every performance figure of the service, each with its floor and the ratio, in one run.

Run: ``make bench`` (or ``.venv/bin/python bench/all_figures.py [--quick]``).

Measured side by side, interleaved (each sample of a figure is taken next to a sample of
its floor, so a busy machine slows both alike):

- in-process order-sign p50 (Flask test client, unsigned calls with ``CDS_AUTH=optional``,
  the default audit store: a SQLite file), for the small fixture and for the largest
  *living* Synthea record of ``../shared/synthea-r4`` sent as full prefetch with an
  insulin pump order; floor: ``json.loads`` + ``json.dumps`` of the same body;
- latency against record size: that record's resources repeated 1x, 2x, 4x, 8x, in ms per
  prefetch resource;
- an order-sign call that leaves every prefetch key unsent (the service fetches them all,
  in parallel) against one round trip to the same FHIR server; the server answers each
  query after a fixed delay, in one write with TCP_NODELAY, like a real one;
- HTTP throughput of ``infusion-pump-cds serve`` with its defaults, against a bare Flask
  app (parse the JSON, answer ``{"cards": []}``) under the same server command and worker
  count, same client and body;
- the first call on freshly started workers against the steady state;
- ``infusion-pump-cds --help`` and ``evaluate FIXTURE`` as processes; floor: the
  interpreter starting (``python -c pass``);
- worker memory after the load (PSS of each worker, the worker count stated) against the
  bare Flask app's workers.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import logging
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_prefetch_fallback import (  # noqa: E402
    SERVICE,
    order_sign_body,
    start_delayed_fhir_server,
)
from tests.builders import PUMP_ORDERS, order_sign_request, pump_order_resources  # noqa: E402
from tests.conftest import FIXTURES, ORDER_SIGN, SHARED, load_json  # noqa: E402
from tests.corpus import record_prefetch, synthea_records  # noqa: E402

SMALL_FIXTURE = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"
BIN = Path(sys.executable).parent
CLI = str(BIN / "infusion-pump-cds")
HOOK_INSTANCE = "5f0e7a3c-1d2b-4c3d-9e4f-5a6b7c8d9e0f"


@dataclass
class Row:
    figure: str
    value: str
    floor: str
    ratio: float | None
    target: str
    note: str = ""


ROWS: list[Row] = []


def emit(row: Row) -> None:
    ROWS.append(row)
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    print(f"  {row.figure}: {row.value} | floor {row.floor} | ratio {ratio} | target {row.target}")
    if row.note:
        print(f"    ({row.note})")
    sys.stdout.flush()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


# CPU seconds of this thread per call, by callable name, from the last ``interleaved``
# run: on a machine shared with other work, wall time counts the time other processes
# held the core, and long calls are preempted more often than their short floors.
CPU_SAMPLES: dict[str, list[float]] = {}


def interleaved(calls: Mapping[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, one of each in turn, after one warm-up each
    (and the CPU time of each call in ``CPU_SAMPLES``)."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    CPU_SAMPLES.clear()
    CPU_SAMPLES.update({name: [] for name in calls})
    for _ in range(runs):
        for name, call in calls.items():
            cpu = time.thread_time()
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
            CPU_SAMPLES[name].append(time.thread_time() - cpu)
    return samples


def cpu_note(name: str, floor: str) -> str:
    value, base = p50(CPU_SAMPLES[name]), p50(CPU_SAMPLES[floor])
    return f"CPU time p50 {ms(value)} vs {ms(base)}, {value / base:.2f}x"


def living_records() -> list[Path]:
    """Synthea records whose Patient has no deceased[x], largest first."""
    living = []
    for path in synthea_records(SHARED / "synthea-r4"):
        bundle = load_json(path)
        patient = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
        )
        if not any(key.startswith("deceased") for key in patient):
            living.append(path)
    return sorted(living, key=lambda p: p.stat().st_size, reverse=True)


def record_body(path: Path, copies: int = 1) -> tuple[bytes, int]:
    """(order-sign body, prefetch resource count) for a record sent as full prefetch with
    an insulin pump order; ``copies`` > 1 repeats every searchset resource under new ids."""
    patient_id, prefetch = record_prefetch(load_json(path))
    for key, value in prefetch.items():
        if key == "patient" or copies == 1:
            continue
        entries = value.get("entry", [])
        grown = list(entries)
        for n in range(1, copies):
            for entry in entries:
                twin = copy.deepcopy(entry)
                twin["resource"]["id"] = f"{twin['resource'].get('id', 'r')}-{n}"
                if twin.get("fullUrl"):
                    twin["fullUrl"] = f"{twin['fullUrl']}-{n}"
                grown.append(twin)
        value["entry"] = grown
        value["total"] = len(grown)
    count = 1 + sum(len(v.get("entry", [])) for k, v in prefetch.items() if k != "patient")
    insulin_pump = next(o for o in PUMP_ORDERS if o.label == "E0784+insulin")
    orders = pump_order_resources(insulin_pump, patient_id)
    body = order_sign_request(patient_id, orders, prefetch, HOOK_INSTANCE)
    return json.dumps(body).encode(), count


def in_process_app(folder: Path) -> Any:
    from cds_service import create_app

    return create_app(
        {
            "AUTH": "optional",
            "RATE_LIMIT_PER_S": 0,  # one client calling as fast as it can is the point here
            "DATABASE_URL": f"sqlite:///{folder / 'audit.sqlite3'}",
            "MAX_REQUEST_BYTES": 200 * 1024 * 1024,
        }
    )


def post_ok(client: Any, body: bytes) -> Callable[[], None]:
    def call() -> None:
        response = client.post(ORDER_SIGN, data=body, content_type="application/json")
        if response.status_code != 200:
            raise RuntimeError(response.get_data(as_text=True)[:300])

    return call


def floor_of(body: bytes) -> Callable[[], None]:
    def call() -> None:
        json.dumps(json.loads(body))

    return call


def fixed_costs(body: bytes) -> None:
    """What a call of ``body`` costs before deciding anything, in CPU time against the
    same floor: Flask answering the same POST through its test client (a route that
    parses the JSON and answers ``{"cards": []}``), and the full R4 validation of its
    draft orders, which the service keeps."""
    from flask import Flask, jsonify, request

    from fhir_mappings.r4 import parse_resource

    bare = Flask("bare")

    @bare.post("/cds-services/<service_id>")
    def call(service_id: str) -> Any:
        request.get_json(force=True)
        return jsonify({"cards": []})

    orders = [e["resource"] for e in json.loads(body)["context"]["draftOrders"]["entry"]]

    def validate_orders() -> None:
        for order in orders:
            parse_resource(order, "context.draftOrders")

    interleaved(
        {
            "floor": floor_of(body),
            "flask": post_ok(bare.test_client(), body),
            "orders": validate_orders,
        },
        100,
    )
    floor = p50(CPU_SAMPLES["floor"])
    flask, orders_cpu = p50(CPU_SAMPLES["flask"]), p50(CPU_SAMPLES["orders"])
    print(
        f"    (fixed costs in CPU time: bare Flask in-process {ms(flask)}, {flask / floor:.2f}x;"
        f" R4 validation of the {len(orders)} draft orders {ms(orders_cpu)},"
        f" {orders_cpu / floor:.2f}x the floor)"
    )


def bench_in_process(folder: Path, largest: Path | None, quick: bool) -> None:
    print("in-process (Flask test client, CDS_AUTH=optional, SQLite file audit store)")
    client = in_process_app(folder).test_client()
    small = SMALL_FIXTURE.read_bytes()
    samples = interleaved(
        {"small": post_ok(client, small), "small floor": floor_of(small)}, 30 if quick else 200
    )
    value, floor = p50(samples["small"]), p50(samples["small floor"])
    emit(
        Row(
            f"order-sign p50, {SMALL_FIXTURE.stem}",
            ms(value),
            ms(floor),
            value / floor,
            "<= 10x",
            f"p99 {ms(sorted(samples['small'])[int(len(samples['small']) * 0.99)])}; "
            + cpu_note("small", "small floor"),
        )
    )
    fixed_costs(small)
    if largest is None:
        print("  ../shared/synthea-r4 not present: record figures skipped")
        return
    per_size: dict[int, tuple[float, float, int, int]] = {}
    sizes = (1, 2) if quick else (1, 2, 4, 8)
    bodies = {n: record_body(largest, n) for n in sizes}
    calls: dict[str, Callable[[], None]] = {}
    for n, (body, _) in bodies.items():
        calls[f"{n}x"] = post_ok(client, body)
        calls[f"{n}x floor"] = floor_of(body)
    samples = interleaved(calls, 3 if quick else 9)
    for n, (body, count) in bodies.items():
        per_size[n] = (p50(samples[f"{n}x"]), p50(samples[f"{n}x floor"]), count, len(body))
    value, floor, count, size = per_size[1]
    emit(
        Row(
            f"order-sign p50, largest living record {largest.name.split('__')[1]} "
            f"({count} resources, {size / 1e6:.2f} MB) as full prefetch",
            ms(value),
            ms(floor),
            value / floor,
            "<= 3x",
            cpu_note("1x", "1x floor"),
        )
    )
    print("  latency against record size (the largest living record's resources repeated):")
    for n, (value, floor, count, size) in per_size.items():
        print(
            f"    {n}x: {count:6d} resources {size / 1e6:7.2f} MB  p50 {value * 1000:9.1f} ms"
            f"  {value * 1e6 / count:7.1f} us/resource  floor {floor * 1000:7.1f} ms"
            f"  ratio {value / floor:5.2f}x"
        )


def bench_prefetch_fallback(quick: bool, delay_ms: float) -> None:
    import requests

    from cds_service import create_app
    from cds_service.fhir_client import close_shared_session

    print(f"prefetch fallback (FHIR server answering after {delay_ms:.0f} ms, one write, NODELAY)")
    logging.getLogger("cds_service").setLevel(logging.ERROR)
    server, thread = start_delayed_fhir_server(delay_ms / 1000)
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    client = create_app(
        {
            "AUTH": "optional",
            "RATE_LIMIT_PER_S": 0,
            "FHIR_SERVERS": ["http://127.0.0.1"],
            "DATABASE_URL": "sqlite://",
        }
    ).test_client()
    path = f"/cds-services/{SERVICE.id}"
    keys = len(SERVICE.prefetch)
    session = requests.Session()

    def missing(n: int) -> Callable[[], None]:
        def call() -> None:
            response = client.post(path, json=order_sign_body(base, n))
            if response.status_code != 200:
                raise RuntimeError(response.get_data(as_text=True)[:300])

        return call

    def one_round_trip() -> None:
        session.get(f"{base}/Patient/bench-patient", timeout=5).raise_for_status()

    try:
        samples = interleaved(
            {"all": missing(keys), "one": missing(1), "floor": one_round_trip},
            5 if quick else 15,
        )
    finally:
        session.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        close_shared_session()
    floor = p50(samples["floor"])
    emit(
        Row(
            f"order-sign with all {keys} prefetch keys missing (fetched)",
            ms(p50(samples["all"])),
            f"one FHIR round trip {ms(floor)}",
            p50(samples["all"]) / floor,
            "<= 1.1x",
            f"one key missing: {ms(p50(samples['one']))}, "
            f"{p50(samples['one']) / floor:.2f}x; one after another would be {keys * delay_ms:.0f}"
            " ms",
        )
    )


# --- HTTP -------------------------------------------------------------------------------

# The bare app replaces the service's app factory before the command line imports it,
# so it runs under exactly the `serve` code path without importing the service.
BARE_APP = """
import sys
import types
from flask import Flask, request, jsonify

def bare_app(*args, **kwargs):
    app = Flask("bare")

    @app.post("/cds-services/<service_id>")
    def call(service_id):
        request.get_json(force=True)
        return jsonify({"cards": []})

    return app

stub = types.ModuleType("cds_service.app")
stub.create_app = bare_app
stub.preload = lambda: None
stub.warm_up_master = lambda app: None
stub.warm_up_worker = lambda app: None
sys.modules["cds_service.app"] = stub
from cds_service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def start_served(name: str, command: list[str], folder: Path, workers_hint: int) -> Served:
    port = free_port()
    log = folder / f"{name}.log"
    env = {
        **os.environ,
        "CDS_AUTH": "optional",
        "CDS_RATE_LIMIT_PER_S": "0",
        "CDS_DATABASE_URL": f"sqlite:///{folder / (name + '.sqlite3')}",
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    served = Served(name, process, port, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        booted = len(re.findall(r"Booting worker", log.read_text(errors="replace")))
        if booted >= workers_hint or (booted and len(served.worker_pids()) == booted):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
        time.sleep(0.1)
    else:
        raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
    time.sleep(1.0)  # the workers finish booting
    return served


def stop_served(served: Served) -> None:
    served.process.terminate()
    try:
        served.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()


def http_post(port: int, body: bytes, connection: http.client.HTTPConnection | None = None) -> Any:
    """(status, connection to reuse or None) for one POST of ``body`` to order-sign."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", ORDER_SIGN, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.will_close:
        conn.close()
        return response.status, None
    return response.status, conn


def timed_post(port: int, body: bytes) -> float:
    start = time.perf_counter()
    status, conn = http_post(port, body)
    elapsed = time.perf_counter() - start
    if conn is not None:
        conn.close()
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return elapsed


def _load_process(port: int, body: bytes, seconds: float, threads: int, out: Any) -> None:
    counts = [0] * threads
    errors = [0] * threads
    stop_at = time.monotonic() + seconds

    def run(index: int) -> None:
        conn = None
        while time.monotonic() < stop_at:
            try:
                status, conn = http_post(port, body, conn)
            except (OSError, http.client.HTTPException):
                conn = None
                errors[index] += 1
                continue
            if status == 200:
                counts[index] += 1
            else:
                errors[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((sum(counts), sum(errors)))


def throughput(port: int, body: bytes, seconds: float, processes: int = 2, threads: int = 4) -> Any:
    """(requests/s answered 200, errors) with ``processes`` x ``threads`` clients."""
    queue: Any = multiprocessing.get_context("fork").Queue()
    clients = [
        multiprocessing.get_context("fork").Process(
            target=_load_process, args=(port, body, seconds, threads, queue)
        )
        for _ in range(processes)
    ]
    start = time.perf_counter()
    for client in clients:
        client.start()
    results = [queue.get() for _ in clients]
    for client in clients:
        client.join()
    elapsed = time.perf_counter() - start
    return sum(r[0] for r in results) / elapsed, sum(r[1] for r in results)


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def bench_http(folder: Path, quick: bool) -> None:
    print("HTTP (`infusion-pump-cds serve` defaults vs a bare Flask app, same command)")
    body = SMALL_FIXTURE.read_bytes()
    served = start_served("serve", [CLI], folder, 2)
    bare = None
    try:
        first = timed_post(served.port, body)
        for _ in range(10):
            timed_post(served.port, body)
        steady = p50([timed_post(served.port, body) for _ in range(15 if quick else 40)])
        # A warm worker's call after the same kind of pause the first call follows: on a
        # shared machine a process that has been idle runs its next call from cold caches.
        idle = []
        for _ in range(3 if quick else 5):
            time.sleep(1.0)
            idle.append(timed_post(served.port, body))
        emit(
            Row(
                "first call on fresh workers vs steady state (small fixture)",
                ms(first),
                f"steady p50 {ms(steady)}",
                first / steady,
                "<= 2x",
                f"a warm worker's call after 1 s idle: p50 {ms(p50(idle))}, first call"
                f" {first / p50(idle):.2f}x that",
            )
        )
        bare = start_served("bare", [str(BIN / "python"), "-c", BARE_APP], folder, 2)
        workers = len(served.worker_pids())
        seconds = 2.0 if quick else 4.0
        rates: dict[str, list[float]] = {"serve": [], "bare": []}
        errors = {"serve": 0, "bare": 0}
        for _ in range(2 if quick else 3):
            for name, target in (("serve", served), ("bare", bare)):
                rate, failed = throughput(target.port, body, seconds)
                rates[name].append(rate)
                errors[name] += failed
        serve_rate, bare_rate = p50(rates["serve"]), p50(rates["bare"])
        emit(
            Row(
                f"HTTP throughput, serve defaults ({workers} workers), 8 clients, small fixture",
                f"{serve_rate:.0f} req/s",
                f"bare Flask {bare_rate:.0f} req/s",
                serve_rate / bare_rate,
                ">= 0.30x (30 %)",
                f"rounds serve {[round(r) for r in rates['serve']]}, bare "
                f"{[round(r) for r in rates['bare']]}; errors serve {errors['serve']}, "
                f"bare {errors['bare']}",
            )
        )
        serve_pss = [pss_kb(pid) / 1024 for pid in served.worker_pids()]
        bare_pss = [pss_kb(pid) / 1024 for pid in bare.worker_pids()]
        emit(
            Row(
                f"worker memory after the load (PSS per worker, {len(serve_pss)} workers)",
                f"{max(serve_pss):.1f} MB",
                f"bare Flask {max(bare_pss):.1f} MB",
                max(serve_pss) / max(bare_pss),
                "<= 35 MB",
                "each worker: " + ", ".join(f"{v:.1f}" for v in serve_pss) + " MB",
            )
        )
    finally:
        stop_served(served)
        if bare is not None:
            stop_served(bare)


def bench_cli(quick: bool) -> None:
    print("command line as processes (bytecode compiled, as an installed package has it)")
    # An installed package has its modules compiled; a checkout gets them written by the
    # warm-up run, unless PYTHONDONTWRITEBYTECODE forbids it (then every run compiles).
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "CDS_AUTH": "optional",
        "CDS_DATABASE_URL": "sqlite://",
        "PYTHONPATH": str(ROOT),
    }

    def run(*command: str) -> Callable[[], None]:
        def call() -> None:
            subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)

        return call

    samples = interleaved(
        {
            "help": run(CLI, "--help"),
            "evaluate": run(CLI, "evaluate", str(SMALL_FIXTURE)),
            "floor": run(str(BIN / "python"), "-c", "pass"),
        },
        3 if quick else 7,
    )
    floor = p50(samples["floor"])
    for name, target in (("help", "<= 0.3 s"), ("evaluate", "<= 0.8 s")):
        figure = "infusion-pump-cds --help" if name == "help" else "infusion-pump-cds evaluate"
        emit(
            Row(
                f"{figure} (p50 of {len(samples[name])})",
                f"{p50(samples[name]):.3f} s",
                f"python -c pass {floor:.3f} s",
                p50(samples[name]) / floor,
                target,
            )
        )


@contextmanager
def quiet_logs() -> Iterator[None]:
    logging.getLogger().setLevel(logging.ERROR)
    yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--delay-ms", type=float, default=200.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cores = os.cpu_count()
    load = os.getloadavg()
    print(f"{cores} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    living = living_records() if (SHARED / "synthea-r4").is_dir() else []
    largest = living[0] if living else None
    with tempfile.TemporaryDirectory() as tmp, quiet_logs():
        folder = Path(tmp)
        bench_in_process(folder, largest, args.quick)
        bench_prefetch_fallback(args.quick, args.delay_ms)
        bench_http(folder, args.quick)
        bench_cli(args.quick)
    print()
    print("| figure | measured | floor | ratio | target |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        print(f"| {row.figure} | {row.value} | {row.floor} | {ratio} | {row.target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
