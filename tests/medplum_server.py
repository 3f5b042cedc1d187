"""Start and load the Medplum-based FHIR server of ``demo/fhir_server`` (Node.js)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_mappings.record import binding

SERVER_DIR = Path(__file__).resolve().parent.parent / "demo" / "fhir_server"
START_TIMEOUT_S = 60

# What a Synthea bundle holds that the service reads (the rest, Claims and
# ExplanationOfBenefits mostly, is left out to keep loading quick).
LOADED_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "MedicationRequest",
        "Medication",
        "Observation",
        "AllergyIntolerance",
        "Device",
        "Encounter",
        "Procedure",
        "QuestionnaireResponse",
    }
)


LAB_CODES = frozenset(code for lab in binding("labs")["labs"].values() for code in lab["codes"])


def _worth_loading(resource: dict[str, Any]) -> bool:
    """Resources of the types the service reads; Observations only of the labs it reads
    (Medplum's in-memory search scans every resource, and Synthea records hold hundreds)."""
    if resource["resourceType"] not in LOADED_TYPES:
        return False
    if resource["resourceType"] != "Observation":
        return True
    codes = {c.get("code") for c in (resource.get("code") or {}).get("coding") or []}
    return bool(codes & LAB_CODES)


def node_or_skip() -> str:
    """The ``node`` executable; skip without it, except in CI where node must be there."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI for the FHIR server tests")
        pytest.skip("node is not installed")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail(
            "demo/fhir_server/node_modules is missing: run `make test` "
            "(it runs `npm ci --prefix demo/fhir_server`)"
        )
    return node


@dataclass
class MedplumServer:
    """A running server: its base URL, the bearer token it wants, a session for loading."""

    base: str
    token: str
    process: subprocess.Popen[str]
    output_reader: threading.Thread
    session: requests.Session = field(default_factory=requests.Session)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"}

    def post(self, path: str, resource: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(
            f"{self.base}/{path}", json=resource, headers=self._headers(), timeout=30
        )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def get(self, url: str) -> dict[str, Any]:
        full = url if url.startswith("http") else f"{self.base}/{url}"
        response = self.session.get(full, headers=self._headers(), timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def search_all_pages(self, query: str) -> Any:
        """A read, or a search with its pages merged: what a client would prefetch."""
        first = self.get(query)
        if first.get("resourceType") != "Bundle":
            return first
        entries, page = list(first.get("entry") or []), first
        while next_url := next(
            (link["url"] for link in page.get("link") or [] if link["relation"] == "next"), None
        ):
            page = self.get(next_url)
            entries += page.get("entry") or []
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
        if entries:
            bundle["entry"] = entries
        return bundle

    def requests_seen(self) -> list[dict[str, Any]]:
        return self.get("_requests")["requests"]  # type: ignore[no-any-return]

    def load_synthea(self, path: Path) -> dict[str, str]:
        """Load a Synthea transaction bundle; return the new references by resource type
        (the first of each type: the Patient, one Encounter, ...)."""
        bundle = json.loads(path.read_text(encoding="utf-8"))
        entries = [e for e in bundle["entry"] if _worth_loading(e["resource"])]
        answer = self.post("", {"resourceType": "Bundle", "type": "batch", "entry": entries})
        created: dict[str, str] = {}
        for entry in answer["entry"]:
            location = entry["response"].get("location") or ""
            if not entry["response"]["status"].startswith("201"):
                raise RuntimeError(f"loading {path.name} failed: {entry['response']}")
            created.setdefault(location.split("/")[0], location)
        return created

    def stop(self) -> None:
        self.session.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.output_reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_medplum(token: str, page_size: int = 20) -> MedplumServer:
    """Start the server on a free loopback port; return once it says it is listening."""
    node = node_or_skip()
    process = subprocess.Popen(
        [
            node,
            str(SERVER_DIR / "server.mjs"),
            "--port",
            "0",
            "--token",
            token,
            "--page-size",
            str(page_size),
        ],
        cwd=SERVER_DIR,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    ready: dict[str, Any] = {}
    started = threading.Event()

    def read_output() -> None:
        """Take the readiness line, then drain the rest so the server never blocks on it."""
        if process.stdout is None:
            return
        for line in process.stdout:
            if not started.is_set():
                ready.update(json.loads(line))
                started.set()
        started.set()

    output_reader = threading.Thread(target=read_output, daemon=True)
    output_reader.start()
    started.wait(START_TIMEOUT_S)
    if "base" not in ready:
        process.kill()
        process.wait(timeout=10)
        output_reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        raise RuntimeError("the Medplum FHIR server did not start")
    return MedplumServer(
        base=ready["base"], token=token, process=process, output_reader=output_reader
    )
