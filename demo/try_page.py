"""The demo's "try it" page: an order screen that signs orders the way an EHR does.

Pick a patient of the demo FHIR server, a pump, a drug and its route, and sign: the
page's back end (playing the EHR) builds the draft orders, fills the prefetch from the
FHIR server by the service's discovery templates and calls the service, exactly as
``infusion-pump-cds try`` does (``cds_service.try_as_ehr``); the page renders the cards
(markdown, links, suggestions, override reasons) and each order's coverage-information.
A ``smart`` link on a card (the documentation app, once the service offers one) is shown
as a launch button.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory

from cds_service.try_as_ehr import (
    CRD_VERSIONS,
    ROUTES,
    OrderSpec,
    TryFailed,
    TryRequest,
    known_drugs,
    run_try,
)
from demo.data import DemoPatient
from fhir_mappings.record import binding

STATIC = Path(__file__).resolve().parent / "static"


def create_page(*, service_url: str, fhir_server: str, patients: Sequence[DemoPatient]) -> Flask:
    """The page's Flask app, signing against ``service_url`` for ``fhir_server``'s patients."""
    app = Flask(__name__, static_folder=None)
    known = {patient.id: patient for patient in patients}

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC, "try.html")

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC, name)

    @app.get("/api/options")
    def options() -> Response:
        pumps = [
            {"code": code, "display": entry["display"], "kind": entry["kind"]}
            for code, entry in sorted(binding("pumps")["hcpcs"].items())
        ]
        return jsonify(
            {
                "patients": [patient.summary() for patient in patients],
                "pumps": pumps,
                "drugs": known_drugs(every_name=True),
                "routes": list(ROUTES),
                "crd_versions": list(CRD_VERSIONS),
                "service": service_url,
                "fhir_server": fhir_server,
            }
        )

    @app.post("/api/sign")
    def sign() -> tuple[Response, int]:
        answer, status = _sign(request.get_json(silent=True), known, service_url, fhir_server)
        return jsonify(answer), status

    return app


def _sign(
    form: Any, known: Mapping[str, DemoPatient], service_url: str, fhir_server: str
) -> tuple[dict[str, Any], int]:
    """Sign the order the page's form describes, as the EHR would: the request and the
    response, or what is wrong with the form."""
    if not isinstance(form, dict):
        return {"error": "send the order as JSON"}, 400
    patient = known.get(str(form.get("patient")))
    if patient is None:
        return {"error": "pick one of the demo patients"}, 400
    order = OrderSpec(
        hcpcs=form.get("hcpcs") or None,
        drug=form.get("drug") or None,
        route=form.get("route") or None,
    )
    try:
        result = run_try(
            TryRequest(
                fhir_server=fhir_server,
                patient=patient.id,
                orders=[order],
                encounter=form.get("encounter") or None,
                crd_version=form.get("crd_version") or None,
                service_url=service_url,
            )
        )
    except TryFailed as exc:
        return {"error": str(exc)}, 400
    return {"status": result.status, "request": result.body, "response": result.response}, 200
