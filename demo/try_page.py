"""The demo's "try it" page: an order screen that signs orders the way an EHR does.

Pick a patient of the demo FHIR server, a pump, a drug and its route, and sign: the
page's back end (playing the EHR) builds the draft orders, fills the prefetch from the
FHIR server by the service's discovery templates and calls the service, exactly as
``infusion-pump-cds try`` does (``cds_service.try_as_ehr``); the page renders the cards
(markdown, links, suggestions, override reasons) and each order's coverage-information.
A ``smart`` link on a card (the documentation app) is a launch button: the page, as the
EHR, registers a launch context at its SMART authorization server (the patient, the
orders and their Coverage as ``fhirContext``, the link's ``appContext``) and opens the
link's URL with ``iss`` and ``launch`` (SMART App Launch EHR launch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
DEMO_USER = "demo-clinician"  # the Practitioner id the demo signs in as

# An EHR launch: the launch context to register -> the URL to open (``None``: no launches).
Launcher = Callable[[str, dict[str, Any]], str]


def create_page(
    *,
    service_url: str,
    fhir_server: str,
    patients: Sequence[DemoPatient],
    launcher: Launcher | None = None,
) -> Flask:
    """The page's Flask app, signing against ``service_url`` for ``fhir_server``'s patients;
    ``launcher(link_url, context)`` launches a card's app link."""
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

    @app.post("/api/launch")
    def launch() -> tuple[Response, int]:
        form = request.get_json(silent=True)
        if launcher is None:
            return jsonify({"error": "this page has no SMART authorization server"}), 404
        if not isinstance(form, dict) or not isinstance(form.get("request"), dict):
            return jsonify({"error": "send the card's link and the signed request"}), 400
        url = str(form.get("url") or "")
        if url.split("?", 1)[0] != f"{service_url.rstrip('/')}/dtr/launch":
            return jsonify({"error": "only the service's documentation app is launched"}), 400
        app_context = form.get("appContext")
        context = ehr_launch_context(
            form["request"], app_context if isinstance(app_context, str) else None
        )
        return jsonify({"url": launcher(url, context)}), 200

    return app


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        if value["resourceType"] == "Bundle":
            for entry in value.get("entry") or []:
                yield from _resources(entry.get("resource") if isinstance(entry, dict) else None)
        else:
            yield value


def ehr_launch_context(body: Mapping[str, Any], app_context: str | None) -> dict[str, Any]:
    """What the EHR launches the app with after signing ``body`` (an order-sign request):
    the patient, the orders and the active Coverage as ``fhirContext`` (SMART 2.1 objects),
    the card link's ``appContext``, and the signed-in clinician."""
    context = body.get("context") or {}
    drafts = _resources(context.get("draftOrders"))
    orders = [f"{r['resourceType']}/{r['id']}" for r in drafts if r.get("id")]
    coverages = [
        f"Coverage/{r['id']}"
        for value in (body.get("prefetch") or {}).values()
        for r in _resources(value)
        if r["resourceType"] == "Coverage" and r.get("status") == "active" and r.get("id")
    ]
    launch: dict[str, Any] = {
        "patient": context.get("patientId"),
        "fhirContext": [{"reference": r} for r in [*orders, *coverages[:1]]],
        "fhirUser": f"Practitioner/{DEMO_USER}",
        "user": DEMO_USER,
    }
    if app_context:
        launch["appContext"] = app_context
    return launch


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
