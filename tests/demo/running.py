"""``python -m demo.run`` started the way the demo tests start it: on free ports, with its
audit store in a folder of the test, waiting for its ready file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

START_TIMEOUT_S = 180


class RunningDemo:
    """The demo's process and, once it is ready, its URLs (``fhir``, ``service``,
    ``page``, ``smart``); ``output`` is what it printed, after it stopped."""

    def __init__(self, process: subprocess.Popen[str], urls: dict[str, Any]) -> None:
        self.process = process
        self.urls = urls
        self.output = ""


@contextmanager
def running_demo(folder: Path, *extra: str) -> Iterator[RunningDemo]:
    """Start the demo, yield it once ready, stop it with Ctrl-C (SIGINT) and keep what
    it printed; the caller checks ``process.returncode``."""
    ready = folder / "ready.json"
    env = {
        **os.environ,
        "CDS_DATABASE_URL": f"sqlite:///{folder / 'audit.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    ports = ["--port", "0", "--fhir-port", "0", "--page-port", "0", "--smart-port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "demo.run", *ports, "--ready-file", str(ready), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo = RunningDemo(process, {})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the demo did not start in time"
            time.sleep(0.5)
        demo.urls = json.loads(ready.read_text(encoding="utf-8"))
        yield demo
    finally:
        process.send_signal(signal.SIGINT)
        try:
            demo.output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            demo.output, _ = process.communicate(timeout=10)
