"""The README's quick start, run as written: ``make serve PORT=...`` on a free port, then
each command of its example block, through bash, against that served process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import requests

from tests.served_process import START_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTED_PORT = "8080"


def quick_start_commands() -> list[str]:
    """The commands of the Quick start block that calls the service (continuation lines
    joined), in the order written."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    calling = [block for block in blocks if "curl" in block]
    assert len(calling) == 1, "the Quick start has one block of calls to the service"
    joined = calling[0].replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_quick_start_names_make_serve_with_a_port() -> None:
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    assert re.search(r"^make serve PORT=\d+", section, re.M)
    assert "make demo" in section
    assert "make test" in section


@pytest.fixture(scope="module")
def served_by_make() -> Iterator[str]:
    """``make serve PORT=<free port>`` as the README says; its base URL."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # make, the master and its workers: stopped as one group
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("make serve did not start")
                time.sleep(0.2)
        yield base
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_every_quick_start_command_answers(served_by_make: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port = served_by_make.rsplit(":", 1)[1]
    bin_dir = str(Path(sys.executable).parent)
    answers = []
    for command in quick_start_commands():
        command = command.replace(f"127.0.0.1:{DOCUMENTED_PORT}", f"127.0.0.1:{port}")
        command = command.replace(".venv/bin/", f"{bin_dir}/")
        done = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stderr)
        answers.append((command, json.loads(done.stdout)))  # every answer is JSON
    by_kind = {
        "discovery": [a for c, a in answers if c.endswith("/cds-services")],
        "decision": [a for c, a in answers if "order-sign__e0784-insulin__covered" in c],
        "ready": [a for c, a in answers if c.endswith("/readyz")],
    }
    assert all(by_kind.values()), sorted(k for k, v in by_kind.items() if not v)
    assert {s["hook"] for s in by_kind["discovery"][0]["services"]} >= {"order-sign"}
    for response in by_kind["decision"]:  # over HTTP and with evaluate
        covered = [
            part["valueCode"]
            for action in response["systemActions"]
            for extension in action["resource"]["extension"]
            for part in extension["extension"]
            if part["url"] == "covered"
        ]
        assert covered
        assert set(covered) == {"covered"}
    assert len(by_kind["decision"]) == 2
    assert by_kind["ready"][0]["status"] == "ready"
