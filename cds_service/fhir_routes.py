"""A read-only FHIR endpoint for the service's own definitional resources.

``GET /fhir/Questionnaire/<id>`` and ``GET /fhir/Questionnaire?url=<canonical>[|version]``
serve the documentation Questionnaires generated from the policy (the whole-policy form
and the per-rule adaptive DTR forms), so the link on the documentation card and the
canonical in the CRD ``questionnaire`` sub-extension resolve.
Answers are ``application/fhir+json``; an unknown id is a 404 OperationOutcome, a search
that matches nothing an empty ``searchset`` Bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request

from cds_service.dtr_routes import served_forms
from cds_service.errors import operation_outcome
from cds_service.routes import public_base_url
from hooks.questionnaire import matches_canonical, searchset_bundle

FHIR_JSON = "application/fhir+json"

blueprint = Blueprint("fhir", __name__, url_prefix="/fhir")


def _fhir_response(body: Mapping[str, Any], status: int = 200) -> Response:
    response = cast(Response, current_app.json.response(body))
    response.status_code = status
    response.mimetype = FHIR_JSON
    return response


def _questionnaires() -> list[Mapping[str, Any]]:
    """The whole-policy form, then the per-rule adaptive DTR forms."""
    return [current_app.extensions["cds_questionnaire"], *served_forms().values()]


@blueprint.get("/Questionnaire/<questionnaire_id>")
def read_questionnaire(questionnaire_id: str) -> Response:
    if questionnaire_id.startswith("$"):  # an operation (``$next-question``): POST only
        outcome = operation_outcome(f"{questionnaire_id} takes a POST", "not-supported")
        response = _fhir_response(outcome, 405)
        response.headers["Allow"] = "POST"
        return response
    for questionnaire in _questionnaires():
        if questionnaire["id"] == questionnaire_id:
            return _fhir_response(questionnaire)
    outcome = operation_outcome(f"No Questionnaire with id '{questionnaire_id}'", "not-found")
    return _fhir_response(outcome, 404)


@blueprint.get("/Questionnaire")
def search_questionnaire() -> Response:
    """Search by ``url`` (canonical, optionally ``|version``) and ``_id``; other
    parameters are ignored, as FHIR servers do by default, and left out of the self link."""
    found = _questionnaires()
    used: list[tuple[str, str]] = []
    for canonical in request.args.getlist("url"):
        found = [q for q in found if matches_canonical(q, canonical)]
        used.append(("url", canonical))
    for wanted in request.args.getlist("_id"):
        found = [q for q in found if q["id"] == wanted]
        used.append(("_id", wanted))
    base = public_base_url()
    self_url = f"{base}/fhir/Questionnaire" + (f"?{urlencode(used)}" if used else "")
    return _fhir_response(searchset_bundle(found, base, self_url))
