"""``make demo`` (``python -m demo.run``): everything starts, the patients are loaded, an
example per outcome is found and printed, and Ctrl-C stops it all."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from demo.data import fixture_patients, synthea_patients
from tests.demo.running import running_demo
from tests.medplum_server import node_or_skip

START_TIMEOUT_S = 180


def test_demo_starts_prints_examples_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    node_or_skip()
    with running_demo(tmp_path) as demo:
        urls = demo.urls
        options = requests.get(f"{urls['page']}/api/options", timeout=10).json()
        expected = len(fixture_patients()) + len(synthea_patients())
        assert len(options["patients"]) == expected
        assert requests.get(f"{urls['service']}/readyz", timeout=10).status_code == 200
        patients = requests.get(f"{urls['fhir']}/Patient?_count=1&_total=accurate", timeout=10)
        assert patients.status_code == 200
        coverage = requests.get(f"{urls['fhir']}/Coverage?status=active&_count=1", timeout=10)
        assert coverage.json().get("entry")
    out = demo.output
    process = demo.process
    assert process.returncode == 0, out
    for outcome in ("COVERED", "CONDITIONAL", "NOT-COVERED"):
        assert any(line.strip().startswith(outcome) for line in out.splitlines()), out
    assert f"try --fhir-server {urls['fhir']} --patient fx-" in out
    assert f"{urls['service']}/cds-services" in out
    assert "Rx Sign can only order medications" in out
    assert f"iss: {urls['smart']}" in out  # the SMART server, listed with the app
    assert f"{urls['service']}/dtr/launch" in out
    assert "Stopping the demo" in out
    stopped = [f"{urls['fhir']}/metadata", f"{urls['service']}/healthz", urls["page"]]
    for url in [*stopped, f"{urls['smart']}/.well-known/smart-configuration"]:
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
