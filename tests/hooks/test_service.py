"""The service definitions: prefetch templates built from the bindings, keys facts read."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_mappings.facts import KEYS_FACTS_READ
from fhir_mappings.prefetch_keys import DEVICE_REQUESTS, OBSERVATIONS
from hooks import SERVICES
from hooks.service import PATIENT_PREFETCH

LAB_BINDINGS = Path(__file__).resolve().parents[2] / "fhir_mappings" / "bindings" / "labs.json"


def test_the_observation_template_asks_for_the_codes_of_the_lab_bindings() -> None:
    """Every LOINC code a lab fact reads, in binding order, and no other."""
    labs = json.loads(LAB_BINDINGS.read_text(encoding="utf-8"))["labs"]
    resource, _, parameters = PATIENT_PREFETCH[OBSERVATIONS].partition("?")
    assert resource == "Observation"
    (codes,) = [p.removeprefix("code=") for p in parameters.split("&") if p.startswith("code=")]
    assert codes.split(",") == [
        f"http://loinc.org|{code}" for lab in labs.values() for code in lab["codes"]
    ]


def test_every_prefetch_key_is_one_a_fact_reads() -> None:
    """Except order-dispatch's DeviceRequests, where a client may send the dispatched
    orders: never fetched, since no fact reads them."""
    for service in SERVICES.values():
        unread = set(service.prefetch) - KEYS_FACTS_READ
        expected = {DEVICE_REQUESTS} if service.hook == "order-dispatch" else set()
        assert unread == expected, service.id
