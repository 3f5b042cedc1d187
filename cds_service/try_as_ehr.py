"""Acting as the EHR: ``infusion-pump-cds try``.

Given a FHIR server, a patient on it and the orders to sign (a pump by HCPCS code, the
drug it gives, its route), this builds the draft orders an EHR would send, fills the
prefetch from the service's own discovery templates by querying that server (or sends
none, ``--no-prefetch``, so the service fetches what it needs itself), calls the
service's order-sign endpoint (in this process by default, or a running service at
``--service URL``), and renders the answer: the decision per order from its CRD
coverage-information, then each card.

Problems the user can fix (an unknown drug, a server that cannot be reached, a patient
it does not hold) raise ``TryFailed`` with one line saying what is wrong.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import cache
from typing import Any
from urllib.parse import urljoin

import requests

from cds_service.prefetch import render_template
from fhir_mappings.codes import HCPCS, RXNORM, SNOMED
from fhir_mappings.record import binding
from hooks.coverage_information import EXTENSION_URL

HOOK = "order-sign"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
CRD_VERSIONS = ("2.0", "2.1", "2.2")
DEFAULT_USER = "Practitioner/try-clinician"
FHIR_TIMEOUT_S = 30.0
SERVICE_TIMEOUT_S = 60.0
MAX_PAGES = 50
# SNOMED CT route-of-administration concepts (FHIR R4 route-codes value set).
ROUTES = {
    "subcutaneous": ("34206005", "Subcutaneous route"),
    "intravenous": ("47625008", "Intravenous route"),
    "intrathecal": ("72607000", "Intrathecal route"),
    "epidural": ("404820008", "Epidural route"),
    "intra-arterial": ("58100008", "Intra-arterial route"),
    "intraperitoneal": ("38239002", "Intraperitoneal route"),
}
# The route a drug family is given by when the user names none.
_DEFAULT_ROUTES = {
    "insulin": "subcutaneous",
    "deferoxamine": "subcutaneous",
    "immune-globulin": "subcutaneous",
    "antispasmodic": "intrathecal",
    "ziconotide": "intrathecal",
    "floxuridine": "intra-arterial",
}
_HCPCS = re.compile(r"^[A-Z][0-9]{4}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class TryFailed(Exception):
    """Something the user can fix; the message is one line saying what."""


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """One thing to sign: a pump (HCPCS), the drug it gives, or both; the drug's route."""

    hcpcs: str | None = None
    drug: str | None = None
    route: str | None = None


@dataclass(frozen=True, slots=True)
class Drug:
    family: str
    name: str  # as the user gave it
    rxnorm: str | None
    known_name: str  # the policy's name for it that matched


@dataclass
class TryRequest:
    """Everything ``try`` was asked."""

    fhir_server: str
    patient: str
    orders: Sequence[OrderSpec]
    token: str | None = None
    encounter: str | None = None
    user: str = DEFAULT_USER
    crd_version: str | None = None
    prefetch: bool = True
    service_url: str | None = None
    as_of: date | None = None


@dataclass
class TryResult:
    """The call made and its answer."""

    status: int
    response: Any
    body: dict[str, Any]
    service: str  # "in-process" or the service URL
    prefetch_notes: dict[str, str] = field(default_factory=dict)


# -- orders -----------------------------------------------------------------------------


@cache
def _drug_names() -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    return tuple(
        (family["family"], tuple(family["names"]), tuple(family["rxnorm"]))
        for family in binding("drugs")["families"]
    )


def known_drugs(*, every_name: bool = False) -> list[str]:
    """The first name of each drug family the policy names (for messages), or every name
    it knows them by; not the catch-all family of preparations (``other``)."""
    if every_name:
        return sorted({n for family, names, _ in _drug_names() if family != "other" for n in names})
    return [names[0] for family, names, _ in _drug_names() if names and family != "other"]


def find_drug(name: str) -> Drug:
    """The drug family ``name`` belongs to; ``TryFailed`` for a drug the policy does not
    name (the service would see no infusion-pump drug, so there would be nothing to try)."""
    wanted = name.strip().lower()
    for family, names, codes in _drug_names():
        matched = [known for known in names if re.search(rf"\b{re.escape(known)}\b", wanted)]
        if wanted == family or matched:
            # The family's first code, for a drug named by its family's first name only:
            # a brand or other ingredient is sent by name, which identifies it as well.
            first = names[0] if names else family
            code = codes[0] if codes and wanted in (first, family) else None
            return Drug(family, name.strip(), code, matched[0] if matched else first)
    raise TryFailed(f"unknown drug {name!r}; the policy names e.g. {', '.join(known_drugs())}")


def _pump(hcpcs: str) -> Mapping[str, Any] | None:
    pumps: Mapping[str, Any] = binding("pumps")["hcpcs"]
    return pumps.get(hcpcs)


def check_orders(orders: Sequence[OrderSpec]) -> None:
    """``TryFailed`` for an order that cannot be built."""
    if not orders:
        raise TryFailed("nothing to sign: give --order HCPCS and/or --drug NAME")
    for spec in orders:
        if spec.hcpcs is None and spec.drug is None:
            raise TryFailed("nothing to sign: give --order HCPCS and/or --drug NAME")
        if spec.hcpcs is not None and not _HCPCS.match(spec.hcpcs):
            raise TryFailed(f"--order {spec.hcpcs!r} is not a HCPCS code (like E0784)")
        if spec.drug is not None:
            find_drug(spec.drug)
        if spec.route is not None and spec.route not in ROUTES:
            raise TryFailed(f"unknown route {spec.route!r}; one of {', '.join(ROUTES)}")
        if spec.route is not None and spec.drug is None:
            raise TryFailed("--route is the route of a --drug; give the drug too")


def draft_orders(
    orders: Sequence[OrderSpec], patient_id: str, authored_on: date, user: str
) -> list[dict[str, Any]]:
    """The draft DeviceRequest and MedicationRequest resources an EHR would send."""
    check_orders(orders)
    subject = {"reference": f"Patient/{patient_id}"}
    resources: list[dict[str, Any]] = []
    for number, spec in enumerate(orders, start=1):
        pump = _pump(spec.hcpcs) if spec.hcpcs else None
        if spec.hcpcs is not None:
            display = pump["display"] if pump else f"HCPCS {spec.hcpcs}"
            resources.append(
                {
                    "resourceType": "DeviceRequest",
                    "id": f"pump-{number}",
                    "status": "draft",
                    "intent": "original-order",
                    "codeCodeableConcept": {
                        "coding": [{"system": HCPCS, "code": spec.hcpcs, "display": display}],
                        "text": display,
                    },
                    "subject": subject,
                    "requester": {"reference": user},
                    "authoredOn": authored_on.isoformat(),
                }
            )
        if spec.drug is not None:
            resources.append(_medication_request(spec, number, pump, subject, authored_on, user))
    return resources


def _medication_request(
    spec: OrderSpec,
    number: int,
    pump: Mapping[str, Any] | None,
    subject: dict[str, str],
    authored_on: date,
    user: str,
) -> dict[str, Any]:
    drug = find_drug(str(spec.drug))
    route_name = spec.route or _DEFAULT_ROUTES.get(drug.family, "intravenous")
    route_code, route_display = ROUTES[route_name]
    coding: dict[str, str] = {"system": RXNORM, "display": drug.name}
    if drug.rxnorm:
        coding["code"] = drug.rxnorm
    # Implanted pumps are refilled in the clinic; external ones run at home.
    category = "outpatient" if pump and pump.get("kind") == "implantable" else "community"
    return {
        "resourceType": "MedicationRequest",
        "id": f"drug-{number}",
        "status": "draft",
        "intent": "original-order",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "medicationCodeableConcept": (
            {"coding": [coding], "text": drug.name} if drug.rxnorm else {"text": drug.name}
        ),
        "subject": subject,
        "requester": {"reference": user},
        "authoredOn": authored_on.isoformat(),
        "dosageInstruction": [
            {
                "text": f"Continuous infusion by pump, {route_display.lower()}",
                "route": {
                    "coding": [{"system": SNOMED, "code": route_code, "display": route_display}]
                },
            }
        ],
    }


# -- the FHIR server --------------------------------------------------------------------


class FhirServer:
    """The EHR's FHIR server as ``try`` reads it: with the token, following pages."""

    def __init__(self, base_url: str, token: str | None) -> None:
        if not re.match(r"^https?://[^/\s]+", base_url):
            raise TryFailed(f"--fhir-server {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Accept"] = "application/fhir+json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, query: str) -> Any:
        url = query if query.startswith("http") else f"{self.base_url}/{query.lstrip('/')}"
        try:
            response = self.session.get(url, timeout=FHIR_TIMEOUT_S)
        except requests.RequestException as exc:
            raise TryFailed(
                f"cannot reach the FHIR server {self.base_url} ({type(exc).__name__})"
            ) from exc
        if response.status_code in (401, 403):
            raise TryFailed(
                f"the FHIR server {self.base_url} refused access (HTTP {response.status_code});"
                " pass --token"
            )
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise TryFailed(
                f"the FHIR server {self.base_url} answered HTTP {response.status_code} to {query}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise TryFailed(f"the FHIR server {self.base_url} sent no JSON for {query}") from exc

    def search(self, query: str) -> Any:
        """A read, or a search with its ``next`` pages merged into one searchset Bundle."""
        first = self.get(query)
        if not isinstance(first, dict) or first.get("resourceType") != "Bundle":
            return first
        entries = list(first.get("entry") or [])
        page, pages = first, 1
        while (next_url := _next_link(page)) is not None and pages < MAX_PAGES:
            page = self.get(urljoin(f"{self.base_url}/", next_url))
            if not isinstance(page, dict):
                break
            entries += page.get("entry") or []
            pages += 1
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        bundle["total"] = len(entries)
        if entries:
            bundle["entry"] = entries
        return bundle


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            return str(link.get("url"))
    return None


def fill_prefetch(
    templates: Mapping[str, str], context: Mapping[str, Any], server: FhirServer
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each template's query run on the server: (prefetch, notes on the keys left out)."""
    prefetch: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for key, template in templates.items():
        query = render_template(template, context)
        if query is None:
            notes[key] = "not requested: the context has no value for its template"
            continue
        value = server.search(query)
        if value is None:
            notes[key] = "not found on the FHIR server"
            continue
        prefetch[key] = value
    return prefetch, notes


# -- the service ------------------------------------------------------------------------


class _Service:
    """The CDS service ``try`` calls: discovery and one POST."""

    def discovery(self) -> dict[str, Any]:
        raise NotImplementedError

    def call(self, service_id: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class _InProcess(_Service):
    def __init__(self, fhir_server: str, as_of: date | None) -> None:
        from cds_service.app import create_app

        clock: Callable[[], datetime] | None = None
        if as_of is not None:
            fixed = datetime.combine(as_of, time(12, 0), tzinfo=UTC)
            clock = lambda: fixed  # noqa: E731 - the app's injectable clock
        settings = {
            "AUTH": "optional",
            "DATABASE_URL": "sqlite://",  # a dry run: not recorded in the real audit trail
            "FHIR_SERVERS": [fhir_server],
            "FHIR_DEADLINE_S": FHIR_TIMEOUT_S,
            "FHIR_CALL_TIMEOUT_S": FHIR_TIMEOUT_S,
        }
        self.app = create_app(settings, clock=clock) if clock else create_app(settings)
        self.client = self.app.test_client()

    def discovery(self) -> dict[str, Any]:
        return self.client.get("/cds-services").get_json()  # type: ignore[no-any-return]

    def call(self, service_id: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        response = self.client.post(f"/cds-services/{service_id}", json=dict(body))
        return response.status_code, response.get_json()

    def close(self) -> None:
        self.app.extensions["cds_store"].dispose()


class _Remote(_Service):
    def __init__(self, url: str) -> None:
        if not re.match(r"^https?://[^/\s]+", url):
            raise TryFailed(f"--service {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False

    def _request(self, method: str, path: str, body: Any = None) -> requests.Response:
        try:
            return self.session.request(
                method, f"{self.url}{path}", json=body, timeout=SERVICE_TIMEOUT_S
            )
        except requests.RequestException as exc:
            raise TryFailed(f"cannot reach the service {self.url} ({type(exc).__name__})") from exc

    def discovery(self) -> dict[str, Any]:
        response = self._request("GET", "/cds-services")
        try:
            value = response.json()
        except ValueError:
            value = None
        if response.status_code != 200 or not isinstance(value, dict):
            raise TryFailed(
                f"{self.url}/cds-services is not a CDS Hooks discovery endpoint "
                f"(HTTP {response.status_code})"
            )
        return value

    def call(self, service_id: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        response = self._request("POST", f"/cds-services/{service_id}", dict(body))
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"text": response.text[:500]}

    def close(self) -> None:
        self.session.close()


def _order_sign_service(discovery: Mapping[str, Any]) -> Mapping[str, Any]:
    for entry in discovery.get("services") or []:
        if isinstance(entry, dict) and entry.get("hook") == HOOK:
            return entry
    raise TryFailed("the service offers no order-sign service")


def hook_request_body(request: TryRequest, orders: list[dict[str, Any]]) -> dict[str, Any]:
    """The order-sign request body, without prefetch."""
    context: dict[str, Any] = {
        "userId": request.user,
        "patientId": request.patient,
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order} for order in orders],
        },
    }
    if request.encounter:
        context["encounterId"] = request.encounter
    body: dict[str, Any] = {
        "hook": HOOK,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": request.fhir_server.rstrip("/"),
        # The service reads what it was not sent with this token, as it would an EHR's.
        "fhirAuthorization": {
            "access_token": request.token or "no-token-needed",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "infusion-pump-cds",
            "patient": request.patient,
        },
        "context": context,
    }
    if request.crd_version:
        body["extension"] = {"davinci-crd.requestedVersion": request.crd_version}
    return body


def run_try(request: TryRequest) -> TryResult:
    """Build the orders, fill the prefetch, call the service; ``TryFailed`` when it cannot."""
    for name, value in (("--patient", request.patient), ("--encounter", request.encounter)):
        if value is not None and not _FHIR_ID.match(value):
            raise TryFailed(f"{name} {value!r} is not a FHIR id")
    if request.crd_version is not None and request.crd_version not in CRD_VERSIONS:
        raise TryFailed(f"--crd-version must be one of {', '.join(CRD_VERSIONS)}")
    if request.as_of is not None and request.service_url:
        raise TryFailed("--as-of sets the clock of the service in this process; not with --service")
    authored_on = request.as_of or datetime.now(UTC).date()
    orders = draft_orders(request.orders, request.patient, authored_on, request.user)
    server = FhirServer(request.fhir_server, request.token)
    if server.get(f"Patient/{request.patient}") is None:
        raise TryFailed(f"patient {request.patient} is not on the FHIR server {server.base_url}")
    service: _Service = (
        _Remote(request.service_url)
        if request.service_url
        else _InProcess(server.base_url, request.as_of)
    )
    try:
        entry = _order_sign_service(service.discovery())
        body = hook_request_body(request, orders)
        notes: dict[str, str] = {}
        if request.prefetch:
            body["prefetch"], notes = fill_prefetch(
                entry.get("prefetch") or {}, body["context"], server
            )
        status, answer = service.call(str(entry["id"]), body)
    finally:
        service.close()
    return TryResult(
        status=status,
        response=answer,
        body=body,
        service=request.service_url or "in-process",
        prefetch_notes=notes,
    )


# -- rendering --------------------------------------------------------------------------


def order_decisions(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per order the coverage-information a response carries: reference, what was
    ordered, and the extension's parts by name."""
    decided = []
    for action in response.get("systemActions") or []:
        resource = action.get("resource") if isinstance(action, dict) else None
        if not isinstance(resource, dict):
            continue
        for extension in resource.get("extension") or []:
            if not isinstance(extension, dict) or extension.get("url") != EXTENSION_URL:
                continue
            parts: dict[str, Any] = {}
            for part in extension.get("extension") or []:
                value = next((v for k, v in part.items() if k.startswith("value")), None)
                parts.setdefault(part.get("url"), []).append(value)
            concept = (
                resource.get("codeCodeableConcept")
                or resource.get("medicationCodeableConcept")
                or {}
            )
            decided.append(
                {
                    "order": f"{resource.get('resourceType')}/{resource.get('id')}",
                    "what": concept.get("text") or "",
                    "parts": parts,
                }
            )
    return decided


def _first(parts: Mapping[str, list[Any]], name: str) -> Any:
    values = parts.get(name) or []
    return values[0] if values else None


def _wrap(text: str, indent: str, width: int) -> list[str]:
    lines = []
    for line in text.splitlines() or [""]:
        bullet = re.match(r"^(\s*(?:[-*]|\d+\.)\s+)", line)
        hang = " " * len(bullet.group(1)) if bullet else ""
        lines += textwrap.wrap(
            line,
            width=width,
            initial_indent=indent,
            subsequent_indent=indent + hang,
            break_on_hyphens=False,
        ) or [indent.rstrip()]
    return lines


def render_result(result: TryResult, request: TryRequest, width: int = 100) -> str:
    """The answer as terminal text: decisions per order, then the cards."""
    lines = [
        f"order-sign for Patient/{request.patient} on {request.fhir_server} "
        f"(service: {result.service})"
    ]
    prefetch = result.body.get("prefetch")
    if prefetch is None:
        lines.append("prefetch: none sent; the service fetched what it needed")
    else:
        lines.append(f"prefetch: {len(prefetch)} keys filled from the FHIR server")
        lines += [f"  {key}: {note}" for key, note in result.prefetch_notes.items()]
    response = result.response if isinstance(result.response, dict) else {}
    if result.status != 200:
        issues = response.get("issue") or [{}]
        lines.append(
            f"the service answered HTTP {result.status}: "
            + "; ".join(str(i.get("diagnostics", "")) for i in issues)
        )
        return "\n".join(lines)
    decisions = order_decisions(response)
    lines.append("")
    cards = response.get("cards") or []
    if decisions:
        lines.append("Decisions:")
    elif cards:
        lines.append("Decisions: none recorded on the orders (the cards say why)")
    else:
        lines.append("Decisions: none (no order in scope of the policy)")
    for item in decisions:
        parts = item["parts"]
        covered = str(_first(parts, "covered") or "?").upper()
        lines.append(f"  {item['order']} ({item['what']}): {covered}")
        extras = [
            f"{name} {', '.join(str(v) for v in parts[name])}"
            for name in ("pa-needed", "doc-needed", "info-needed")
            if parts.get(name)
        ]
        if extras:
            lines.append(f"    {'; '.join(extras)}")
        reason = _first(parts, "reason")
        if isinstance(reason, dict) and reason.get("text"):
            lines += _wrap(f"reason: {reason['text']}", "    ", width)
        questionnaire = parts.get("questionnaire")
        if questionnaire:
            lines.append(f"    questionnaire: {', '.join(map(str, questionnaire))}")
        lines.append(f"    coverage-assertion-id: {_first(parts, 'coverage-assertion-id')}")
    lines.append("")
    lines.append(f"Cards ({len(cards)}):")
    for card in cards:
        lines += _render_card(card, width)
    return "\n".join(lines)


def _render_card(card: Mapping[str, Any], width: int) -> list[str]:
    source = (card.get("source") or {}).get("label", "")
    topic = ((card.get("source") or {}).get("topic") or {}).get("code", "")
    lines = ["", f"  [{card.get('indicator')}] {card.get('summary')}"]
    lines.append(f"    from {source}" + (f" ({topic})" if topic else ""))
    if card.get("detail"):
        lines += _wrap(str(card["detail"]), "    ", width)
    for link in card.get("links") or []:
        lines.append(f"    link: {link.get('label')} <{link.get('url')}> ({link.get('type')})")
    for suggestion in card.get("suggestions") or []:
        actions = ", ".join(
            f"{a.get('type')} {(a.get('resource') or {}).get('resourceType', '')}".strip()
            for a in suggestion.get("actions") or []
        )
        lines.append(
            f"    suggestion: {suggestion.get('label')}" + (f" [{actions}]" if actions else "")
        )
    reasons = [r.get("display") or r.get("code") for r in card.get("overrideReasons") or []]
    if reasons:
        lines += _wrap("override reasons: " + "; ".join(map(str, reasons)), "    ", width)
    return lines


def render_json(result: TryResult) -> str:
    return json.dumps(result.response, indent=2)
