"""The EHR side of the documentation app's tests: a FHIR server (Medplum) behind the test
SMART authorization server, order-sign fixtures placed on it under their own ids, and
the clinician's answers."""

from __future__ import annotations

import copy
import json
import secrets
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.fhir_load import load_resources
from coverage_policy.model import DocumentationItem
from demo.smart_server import SmartAuthorizationServer, serve_authorization_server
from tests.dtr.loop import _CHOICES as CHOICE_ANSWERS
from tests.dtr.loop import _DECIMALS as DECIMAL_ANSWERS
from tests.dtr.loop import coverage_extensions, part
from tests.medplum_server import MedplumServer, start_medplum

CLIENT_ID = "documentation-app"
ASSERTION_ID = "coverage-assertion-id"


@dataclass
class Ehr:
    fhir: MedplumServer
    auth: SmartAuthorizationServer


@contextmanager
def running_ehr(redirect_uri: str) -> Iterator[Ehr]:
    """Medplum (accepting only its own random token) behind the authorization server."""
    fhir = start_medplum(secrets.token_urlsafe(24))
    try:
        with serve_authorization_server(fhir.base, fhir.token) as auth:
            auth.register(CLIENT_ID, redirect_uri)
            yield Ehr(fhir, auth)
    finally:
        fhir.stop()


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        if value["resourceType"] == "Bundle":
            for entry in value.get("entry") or []:
                yield from _resources(entry.get("resource"))
        else:
            yield value


def _rewrite(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, mapping) for k, v in value.items()}
        if isinstance(value.get("reference"), str) and value["reference"] in mapping:
            out["reference"] = mapping[value["reference"]]
        return out
    if isinstance(value, list):
        return [_rewrite(v, mapping) for v in value]
    return value


def isolate(body: Mapping[str, Any], prefix: str, order_date: str | None = None) -> dict[str, Any]:
    """The order-sign request with every resource id prefixed (several cases share one
    FHIR server), and its orders authored on ``order_date`` when given."""
    found = [
        *(r for v in body.get("prefetch", {}).values() for r in _resources(v)),
        *_resources(body["context"]["draftOrders"]),
    ]
    mapping = {
        f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{prefix}-{r['id']}"[:64]
        for r in found
        if r.get("id")
    }
    out: dict[str, Any] = _rewrite(copy.deepcopy(dict(body)), mapping)
    for resource in [
        *(r for v in out.get("prefetch", {}).values() for r in _resources(v)),
        *_resources(out["context"]["draftOrders"]),
    ]:
        old = f"{resource['resourceType']}/{resource.get('id')}"
        if old in mapping:
            resource["id"] = mapping[old].split("/", 1)[1]
    context = out["context"]
    context["patientId"] = mapping.get(
        f"Patient/{context['patientId']}", "/" + context["patientId"]
    ).split("/", 1)[1]
    if context.get("encounterId"):
        context["encounterId"] = mapping.get(
            f"Encounter/{context['encounterId']}", "/" + context["encounterId"]
        ).split("/", 1)[1]
    if order_date:
        for order in _resources(context["draftOrders"]):
            if "authoredOn" in order:
                order["authoredOn"] = order_date
    out["hookInstance"] = str(uuid.uuid4())
    return out


def orders(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(_resources(body["context"]["draftOrders"]))


def record(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    unique = {
        (r["resourceType"], r["id"]): r
        for v in body.get("prefetch", {}).values()
        for r in _resources(v)
        if r.get("id")
    }
    return list(unique.values())


def place(ehr: Ehr, body: Mapping[str, Any], *, with_orders: bool) -> None:
    """The patient's record on the FHIR server, and the orders unless they are drafts."""
    resources = record(body) + (orders(body) if with_orders else [])
    result = load_resources(resources, ehr.fhir.base, token=ehr.fhir.token)
    assert not result.refused, result.refused


def coverage_of_response(response: Mapping[str, Any]) -> tuple[str, str | None]:
    """(covered, coverage-assertion-id) of the first coverage-information."""
    extension = coverage_extensions(response)[0]
    return part(extension, "covered"), part(extension, ASSERTION_ID)


def launch_context(body: Mapping[str, Any], assertion_id: str | None) -> dict[str, Any]:
    """What the EHR launches the app with: the patient, the orders and Coverage as
    ``fhirContext`` (one a string, SMART 2.0, the others objects, 2.1), the
    coverage-assertion-id as ``appContext``."""
    coverage = next(
        r for r in record(body) if r["resourceType"] == "Coverage" and r.get("status") == "active"
    )
    references = [f"{o['resourceType']}/{o['id']}" for o in orders(body)]
    context: list[Any] = [references[0], *({"reference": r} for r in references[1:])]
    context.append({"reference": f"Coverage/{coverage['id']}"})
    app = {"coverage-assertion-id": assertion_id, "orders": references}
    return {
        "patient": body["context"]["patientId"],
        "fhirContext": context,
        "appContext": json.dumps(app),
        "fhirUser": "Practitioner/dr-doc",
        "user": "dr-doc",
    }


def _field(item: DocumentationItem, today: date, which: int) -> str:
    """The form field value of the answer ``tests.dtr.loop`` gives (0: the one that
    supports coverage for most rules, 1: the one that does not)."""
    if item.answer_type == "boolean":
        return ("yes", "no")[which]
    if item.answer_type == "date":
        return (today.isoformat(), "2001-01-01")[which]
    if item.answer_type == "decimal":
        return str(DECIMAL_ANSWERS[item.id][which])
    return CHOICE_ANSWERS[item.id][which]


def favourable(item: DocumentationItem, today: date) -> str:
    return _field(item, today, 0)


def unfavourable(item: DocumentationItem, today: date) -> str:
    return _field(item, today, 1)
