"""Sent the orders and the record they were signed with, ``$questionnaire-package``
decides as order-sign decided: the same rule, outcome and order date, and no form for an
order a policy precondition stops (the patient died before it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from cds_service.audit import audit_for_assertion
from cds_service.tables import decision, service_call
from tests.conftest import FIXTURES, ORDER_SIGN
from tests.dtr.loop import coverage_extensions, coverage_of, orders_of, part

Row = tuple[str, str, str]  # rule, outcome, order date
SIGNED = sorted((FIXTURES / "requests").glob("order-sign__*.json"))


def _with_one_coverage(path: Path) -> dict[str, Any] | None:
    body = json.loads(path.read_text())
    entries = ((body.get("prefetch") or {}).get("coverage") or {}).get("entry") or []
    active = [e for e in entries if e["resource"].get("status") == "active"]
    return body if len(active) == 1 else None


def _record_sent(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every prefetch resource but the Coverage, as a DTR client sends them."""
    sent = []
    for key, value in (body.get("prefetch") or {}).items():
        if key == "coverage" or not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            sent += [e["resource"] for e in value.get("entry") or [] if "resource" in e]
        else:
            sent.append(value)
    return sent


def _package(client: FlaskClient, body: dict[str, Any], sent: list[dict[str, Any]]) -> Any:
    parameters = [{"name": "coverage", "resource": coverage_of(body)}]
    parameters += [{"name": "order", "resource": order} for order in orders_of(body)]
    parameters += [{"name": "referenced", "resource": resource} for resource in sent]
    return client.post(
        "/fhir/Questionnaire/$questionnaire-package",
        json={"resourceType": "Parameters", "parameter": parameters},
    )


def _recorded_by_signing(client: FlaskClient, assertion_ids: list[str]) -> set[Row]:
    store = client.application.extensions["cds_store"]
    return {
        (report["rule_id"], report["outcome"], report["as_of"])
        for assertion_id in assertion_ids
        for report in audit_for_assertion(store, assertion_id)
    }


def _recorded_by_last_package(client: FlaskClient) -> set[Row]:
    """The decisions the audit trail holds for the latest ``$questionnaire-package`` call."""
    store = client.application.extensions["cds_store"]
    with store.engine.connect() as connection:
        call_id = connection.execute(
            sa.select(sa.func.max(service_call.c.id)).where(
                service_call.c.hook == "questionnaire-package"
            )
        ).scalar()
        rows = connection.execute(
            sa.select(decision.c.rule_id, decision.c.outcome, decision.c.as_of).where(
                decision.c.call_id == call_id
            )
        )
        return {(rule, outcome, str(as_of)) for rule, outcome, as_of in rows}


@pytest.mark.parametrize("path", SIGNED, ids=lambda p: p.stem)
def test_a_package_decides_as_order_sign_did(client: FlaskClient, path: Path) -> None:
    body = _with_one_coverage(path)
    if body is None:
        pytest.skip("not a CRD request with one active Coverage")
    signed = client.post(ORDER_SIGN, json=body)
    assert signed.status_code == 200
    signed_ids = [part(e, "coverage-assertion-id") for e in coverage_extensions(signed.get_json())]
    reply = _package(client, body, _record_sent(body))
    if not signed_ids:
        assert reply.status_code == 400  # nothing decided: no form either
        return
    assert reply.status_code == 200, reply.get_json()
    assert _recorded_by_last_package(client) == _recorded_by_signing(client, signed_ids)


def test_no_form_for_an_order_of_a_patient_who_died_before_it(client: FlaskClient) -> None:
    body = json.loads(
        (
            FIXTURES / "requests" / "order-sign__eip-csii-insulin-lispro__conditional.json"
        ).read_text()
    )
    died = {**copy.deepcopy(body["prefetch"]["patient"]), "deceasedDateTime": "2026-01-01"}
    reply = _package(client, body, [died])
    assert reply.status_code == 400
    diagnostics = reply.get_json()["issue"][0]["diagnostics"]
    assert diagnostics.startswith("No coverage is decided for DeviceRequest/")
    assert "deceased" in diagnostics
