"""The order scope: what a call decides, and the only patient data deciding it may read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coverage_policy.loader import load_policy
from hooks import SERVICES
from hooks.decide import ALWAYS_READ, deliberate, find_scope
from hooks.request import ClinicalInput, HookRequest
from tests.conftest import FIXED_NOW, FIXTURES, load_json

POLICY = load_policy()
TODAY = FIXED_NOW.date()
SIGN_FIXTURES = sorted((FIXTURES / "requests").glob("order-sign__*.json"))


def _request(body: dict[str, Any]) -> HookRequest:
    return HookRequest(
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch=body.get("prefetch") or {},
        extension=body.get("extension") or {},
    )


def _outcomes(request: HookRequest, prefetch: dict[str, Any]) -> list[tuple[str, str, str]]:
    scope = find_scope(request.context["draftOrders"], "context.draftOrders", POLICY, TODAY)
    deliberation = deliberate(request, ClinicalInput(data=prefetch), scope, POLICY, TODAY)
    return [
        (d.rule_id, d.outcome.value, ",".join(o.reference for o in d.episode.orders))
        for d in deliberation.decisions
    ]


@pytest.mark.parametrize("path", SIGN_FIXTURES, ids=lambda p: Path(p).stem)
def test_deciding_on_the_scope_keys_alone_changes_no_decision(path: Path) -> None:
    body = load_json(path)
    if not body.get("prefetch") or path.stem.endswith("__rejected"):
        pytest.skip("no prefetch to restrict, or not answerable")
    request = _request(body)
    scope = find_scope(request.context["draftOrders"], "context.draftOrders", POLICY, TODAY)
    restricted = {k: v for k, v in body["prefetch"].items() if k in scope.prefetch_keys}
    assert _outcomes(request, restricted) == _outcomes(request, body["prefetch"])


def test_out_of_scope_orders_read_nothing() -> None:
    body = load_json(FIXTURES / "requests" / "order-sign__e0250-hospital-bed__out-of-scope.json")
    request = _request(body)
    scope = find_scope(request.context["draftOrders"], "context.draftOrders", POLICY, TODAY)
    assert scope.prefetch_keys == frozenset()


def test_an_insulin_pump_reads_its_criteria_data_and_not_allergies() -> None:
    body = load_json(FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json")
    scope = SERVICES["infusion-pump-coverage-order-sign"].scope(_request(body), {}, POLICY, TODAY)
    assert scope.prefetch_keys >= ALWAYS_READ
    assert {"conditions", "observations", "medicationRequests"} <= scope.prefetch_keys
    assert not {"allergies", "procedures"} & scope.prefetch_keys


def test_a_pump_ordered_alone_reads_the_active_orders_its_drug_may_come_from() -> None:
    body = load_json(FIXTURES / "requests" / "order-sign__e0781-vancomycin__not-covered.json")
    entries = body["context"]["draftOrders"]["entry"]
    body["context"]["draftOrders"]["entry"] = [
        e for e in entries if e["resource"]["resourceType"] == "DeviceRequest"
    ]
    scope = find_scope(body["context"]["draftOrders"], "context.draftOrders", POLICY, TODAY)
    # The drug is unknown until the record is read, so every drug's criteria may apply;
    # the drug-allergy contraindication is an implantable pump's, not this one's.
    assert {"medicationRequests", "conditions", "observations"} <= scope.prefetch_keys
    assert "allergies" not in scope.prefetch_keys


def test_an_implantable_pump_reads_allergies_and_devices() -> None:
    body = load_json(FIXTURES / "requests" / "order-sign__e0783-insulin__not-covered.json")
    scope = find_scope(body["context"]["draftOrders"], "context.draftOrders", POLICY, TODAY)
    assert {"allergies", "devices"} <= scope.prefetch_keys
