"""The documentation app: a SMART on FHIR app the EHR launches (SMART App Launch 2.x).

- ``GET /dtr/launch?iss=&launch=``: EHR launch. Only an ``iss`` registered in
  ``CDS_SMART_CLIENTS`` and allowed as a FHIR server (``CDS_FHIR_SERVERS``) is contacted:
  its ``.well-known/smart-configuration`` is read, and the browser is sent to its
  authorization endpoint (authorization code flow, PKCE S256, ``state``, ``nonce``).
- ``GET /dtr/callback``: ``state`` checked (once: a replayed callback is refused), the
  code exchanged for the user's token (authlib), the ``id_token`` verified
  (``_verify_id_token``: its signature by the EHR's ``jwks_uri`` through the service's
  JWKS cache, algorithm and key as for service calls, ``iss``, ``aud``, expiry and
  ``nonce``), and the session kept server-side
  (``cds_service.smart_sessions``); the browser gets an opaque HttpOnly cookie only.
- ``GET``/``POST /dtr/form``: the documentation form, ``GET /dtr/done``: the new decision
  (``cds_service.smart_form``); ``GET /dtr/.well-known/jwks.json``: the public keys of
  confidential registrations; ``GET /dtr/app.css``.

Every answer here is a page for people: errors are HTML pages (``SmartAppError``), each
with a ``Content-Security-Policy`` that allows no script and no other origin, and
``frame-ancestors`` set to the EHR origins configured. Tokens appear in no URL, log,
page or cookie. What the pages say beyond their templates (the decision so far, the
criterion truths, answers not taken, each error page) is data: ``dtr/form_text.json``
``app``, read through ``dtr.forms.form_text``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import jwt
import requests
from flask import Blueprint, Response, current_app, redirect, render_template, request

from cds_service.audit import decision_record
from cds_service.auth import CLOCK_SKEW_S, JwksCache, find_key_at, verification_key
from cds_service.dtr_routes import completed_coverage, record_dtr_call, served_forms
from cds_service.errors import ClientAuthenticationFailed, FhirQueryFailed
from cds_service.fhir_client import (
    FhirQueryLimits,
    allowed_fhir_servers,
    fhir_server_allowed,
    https_or_loopback,
    shared_session,
)
from cds_service.json_input import UnreadableJson, loads_untrusted
from cds_service.routes import public_base_url
from cds_service.settings import Settings, current_settings
from cds_service.smart_form import (
    FormUnavailable,
    answer_json,
    app_words,
    error_page,
    field_value,
    knowledge_from_json,
    knowledge_to_json,
    launch_context,
    open_form,
    response_resource,
    walk,
    write_response,
)
from cds_service.smart_sessions import (
    SESSION_TTL_S,
    AppSession,
    end_session,
    load_session,
    new_session,
    save_session,
    take_authorization,
)
from cds_service.store import Store
from coverage_policy.model import Outcome, Policy
from dtr.adaptive import Step

if TYPE_CHECKING:
    from authlib.integrations.requests_client import OAuth2Session

logger = logging.getLogger(__name__)

blueprint = Blueprint("smart_app", __name__, url_prefix="/dtr")

COOKIE = "dtr_session"
SCOPE = "launch openid fhirUser patient/*.rs patient/QuestionnaireResponse.cu"
# For a server that knows only SMART v1 scopes (its smart-configuration says so).
SCOPE_V1 = "launch openid fhirUser patient/*.read patient/QuestionnaireResponse.write"
_MAX_DISCOVERY_BYTES = 256 * 1024
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class SmartAppError(Exception):
    """Why a page of the app cannot be shown: answered as an HTML error page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True, slots=True)
class SmartClient:
    """The app's registration with one EHR (``CDS_SMART_CLIENTS`` entry)."""

    issuer: str
    client_id: str
    client_secret: str | None = None
    private_key: Mapping[str, Any] | None = None
    scope: str | None = None


def _store() -> Store:
    return cast(Store, current_app.extensions["cds_store"])


def _now() -> datetime:
    return cast(datetime, current_app.extensions["cds_clock"]())


def _normal_issuer(iss: str) -> str:
    return iss.strip().rstrip("/")


def smart_client(settings: Settings, iss: str) -> SmartClient | None:
    """The app's registration with the EHR ``iss``, if it is configured."""
    wanted = _normal_issuer(iss)
    for issuer, entry in settings.smart_clients.items():
        if _normal_issuer(issuer) == wanted:
            return SmartClient(
                issuer=wanted,
                client_id=entry["client_id"],
                client_secret=entry.get("client_secret"),
                private_key=entry.get("jwks_private_key"),
                scope=entry.get("scope"),
            )
    return None


def frame_ancestors(settings: Settings) -> str:
    """The EHR origins that may embed the app: each issuer's, and those configured."""
    origins: list[str] = []
    for issuer, entry in settings.smart_clients.items():
        for url in [issuer, *entry.get("frame_origins", [])]:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme in ("https", "http") and parts.netloc and origin not in origins:
                origins.append(origin)
    return " ".join(origins) or "'none'"


def page_headers(response: Response) -> Response:
    response.headers.update(_HEADERS)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        f"base-uri 'none'; frame-ancestors {frame_ancestors(current_settings())}"
    )
    return response


def page(template: str, status: int = 200, **values: Any) -> Response:
    values.setdefault("payer", current_settings().payer_name)
    response = Response(render_template(template, **values), status=status, mimetype="text/html")
    return page_headers(response)


@blueprint.errorhandler(SmartAppError)
def answer_app_error(error: SmartAppError) -> Response:
    return page("dtr_error.html", error.status, title=error.title, message=error.message)


def _secure() -> bool:
    return public_base_url().startswith("https://")


def set_session_cookie(response: Response, session: AppSession) -> None:
    """HttpOnly always. Over https: Secure, and SameSite=None with Partitioned, so the
    cookie survives an EHR that embeds the app in a frame; on loopback http: Lax."""
    secure = _secure()
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=SESSION_TTL_S,
        path="/dtr/",
        httponly=True,
        secure=secure,
        samesite="None" if secure else "Lax",
        partitioned=secure,
    )


def current_session(stage: str | None = None) -> AppSession:
    """The browser's session, or an error page when it has none (or it expired)."""
    session = load_session(_store(), request.cookies.get(COOKIE), _now())
    if session is None or (stage is not None and session.data.get("stage") != stage):
        raise SmartAppError(401, *error_page("session_expired"))
    return session


# -- talking to the EHR's authorization server ---------------------------------------------


def _call_limits() -> FhirQueryLimits:
    return current_settings().fhir_limits


def _contactable(url: str, client: SmartClient) -> bool:
    """A URL the app may call on the EHR's behalf: under the issuer, or under a FHIR
    server prefix this service may contact, over https or loopback http."""
    return fhir_server_allowed(
        url, [client.issuer, *allowed_fhir_servers(current_settings(), None)]
    )


def _get_json(url: str, what: str) -> dict[str, Any]:
    """GET a small JSON document, without redirects, within the FHIR call timeout."""
    timeout = _call_limits().call_timeout_s
    failed = SmartAppError(502, *error_page("ehr_unreachable", what=what))
    try:
        with shared_session().get(
            url,
            headers={"Accept": "application/json"},
            timeout=(timeout, timeout),
            allow_redirects=False,
            stream=True,
        ) as answer:
            body = answer.raw.read(_MAX_DISCOVERY_BYTES + 1, decode_content=True)
            status = answer.status_code
    except (requests.RequestException, OSError) as exc:
        logger.warning("documentation app: %s unreachable (%s)", what, type(exc).__name__)
        raise failed from None
    if status != 200 or len(body) > _MAX_DISCOVERY_BYTES:
        logger.warning("documentation app: %s answered HTTP %d", what, status)
        raise failed
    try:
        value = loads_untrusted(body)
    except UnreadableJson:
        raise failed from None
    if not isinstance(value, dict):
        raise failed
    return value


def _smart_configuration(client: SmartClient) -> dict[str, Any]:
    config = _get_json(f"{client.issuer}/.well-known/smart-configuration", "SMART configuration")
    misconfigured = SmartAppError(502, *error_page("ehr_misconfigured"))
    if not https_or_loopback(config.get("authorization_endpoint")):
        raise misconfigured
    token_endpoint = config.get("token_endpoint")
    if not isinstance(token_endpoint, str) or not _contactable(token_endpoint, client):
        raise misconfigured
    methods = config.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise misconfigured
    return config


def _scope(client: SmartClient, config: Mapping[str, Any]) -> str:
    if client.scope:
        return client.scope
    supported = config.get("scopes_supported")
    if (
        isinstance(supported, list)
        and "patient/*.rs" not in supported
        and "patient/*.read" in supported
    ):
        return SCOPE_V1
    return SCOPE


def _callback_url() -> str:
    return f"{public_base_url()}/dtr/callback"


def _oauth(client: SmartClient, scope: str | None = None) -> OAuth2Session:
    # Loaded on a worker's first sign-in to the documentation app, not with the service.
    from authlib.integrations.requests_client import OAuth2Session

    options: dict[str, Any] = {}
    if client.client_secret:
        options["client_secret"] = client.client_secret
        options["token_endpoint_auth_method"] = "client_secret_basic"
    else:
        options["token_endpoint_auth_method"] = "none"
    session = OAuth2Session(
        client.client_id,
        scope=scope,
        redirect_uri=_callback_url(),
        code_challenge_method="S256",
        **options,
    )
    session.trust_env = False
    return session


def _client_assertion(client: SmartClient, token_endpoint: str) -> dict[str, str]:
    """A ``private_key_jwt`` client assertion (RFC 7523), for a client with a key."""
    key = dict(client.private_key or {})
    algorithm = key.get("alg") or ("RS384" if key.get("kty") == "RSA" else "ES384")
    signing_key = jwt.PyJWK.from_dict(key, algorithm=algorithm)
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": token_endpoint,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
        },
        signing_key.key,
        algorithm=algorithm,
        headers={"kid": key["kid"]} if "kid" in key else None,
    )
    return {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def _id_token_key(jwks_uri: str, kid: Any) -> Mapping[str, Any] | None:
    """The EHR's signing key ``kid`` (a header without ``kid``: the set's only signing key),
    read through the service's JWKS cache (``auth.JwksCache``: fetched with a timeout,
    cached, re-fetched at a limited rate when a ``kid`` is new to it); None when the set
    has no such key. Raises ``ClientAuthenticationFailed`` when the set cannot be read."""
    cache: JwksCache = current_app.extensions["cds_jwks_cache"]
    interval = current_settings().jwks_refresh_interval_s
    if isinstance(kid, str) and kid:
        return find_key_at(jwks_uri, kid, cache, interval)
    if kid is not None:
        return None
    jwks = cache.keys(jwks_uri, refresh=False, refresh_interval_s=interval)
    signing = [
        k for k in jwks.get("keys") or [] if isinstance(k, Mapping) and k.get("use", "sig") == "sig"
    ]
    return signing[0] if len(signing) == 1 else None


def _verify_id_token(
    id_token: str, client: SmartClient, pending: Mapping[str, Any]
) -> dict[str, Any]:
    """The id_token's claims, once checked as OpenID Connect Core 3.1.3.7 asks: signed by
    a key of the EHR's ``jwks_uri`` with an algorithm of ``auth.ALLOWED_ALGORITHMS`` that
    the key is for (``auth.verification_key``), ``iss`` the EHR's issuer (its SMART
    configuration's ``issuer``, else the ``iss`` it launched with), ``aud`` (and ``azp``,
    when sent) our ``client_id``, unexpired, and the ``nonce`` of this launch."""
    refused = SmartAppError(401, *error_page("id_token_refused"))
    jwks_uri, issuer, nonce = (pending.get(name) for name in ("jwks_uri", "issuer", "nonce"))
    if not isinstance(jwks_uri, str) or not _contactable(jwks_uri, client):
        logger.warning("documentation app: the EHR names no usable jwks_uri")
        raise refused
    if not isinstance(issuer, str) or not issuer or not isinstance(nonce, str) or not nonce:
        raise refused
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        logger.info("documentation app: id_token refused (not a signed JWT)")
        raise refused from None
    try:
        found = _id_token_key(jwks_uri, header.get("kid"))
    except ClientAuthenticationFailed as failure:
        logger.warning("documentation app: the EHR's signing keys: %s", failure)
        raise SmartAppError(502, *error_page("signing_keys_unreachable")) from None
    if found is None:
        logger.info("documentation app: id_token refused (no key of the EHR has its kid)")
        raise refused
    try:
        key = verification_key(found, header.get("alg"))
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=[key.algorithm_name],
            audience=client.client_id,
            issuer=issuer,
            leeway=CLOCK_SKEW_S,
            options={"require": ["exp", "iat", "aud", "iss", "sub"]},
        )
    except ClientAuthenticationFailed as failure:
        logger.info("documentation app: id_token refused (%s)", failure)
        raise refused from None
    except jwt.PyJWTError as exc:
        logger.info("documentation app: id_token refused (%s)", type(exc).__name__)
        raise refused from None
    if "azp" in claims and claims["azp"] != client.client_id:
        logger.info("documentation app: id_token refused (azp is another client)")
        raise refused
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
        claims["nonce"], nonce
    ):
        logger.info("documentation app: id_token refused (nonce)")
        raise refused
    return claims


# -- routes ------------------------------------------------------------------------------

_STYLESHEET = (Path(__file__).parent / "templates" / "dtr_app.css").read_text(encoding="utf-8")


@blueprint.get("/app.css")
def stylesheet() -> Response:
    response = Response(_STYLESHEET, mimetype="text/css")
    response.headers["Cache-Control"] = "max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@blueprint.get("/.well-known/jwks.json")
def published_keys() -> Response:
    """The public keys of the app's confidential registrations (``jwks_private_key``),
    for EHRs that verify its ``private_key_jwt`` client assertions."""
    keys = [
        {k: v for k, v in entry["jwks_private_key"].items() if k not in _PRIVATE_MEMBERS}
        for entry in current_settings().smart_clients.values()
        if isinstance(entry.get("jwks_private_key"), dict)
    ]
    response = cast(Response, current_app.json.response({"keys": keys}))
    response.headers["Cache-Control"] = "max-age=300"
    return response


@blueprint.get("/launch")
def launch() -> Response:
    iss, launch_token = request.args.get("iss", ""), request.args.get("launch", "")
    if not iss or not launch_token or len(launch_token) > 2000:
        raise SmartAppError(400, *error_page("not_launched"))
    client = smart_client(current_settings(), iss)
    if client is None or not fhir_server_allowed(
        client.issuer, allowed_fhir_servers(current_settings(), None)
    ):
        logger.warning("documentation app launched from an EHR not configured")
        raise SmartAppError(403, *error_page("ehr_not_registered"))
    config = _smart_configuration(client)
    scope = _scope(client, config)
    state, verifier, nonce = (secrets.token_urlsafe(32) for _ in range(3))
    # What the callback checks the id_token against (the configuration is not read again):
    # OpenID Connect's issuer, which SMART servers with sso-openid-connect name.
    issuer = config.get("issuer")
    url, _ = _oauth(client, scope).create_authorization_url(
        config["authorization_endpoint"],
        state=state,
        code_verifier=verifier,
        launch=launch_token,
        aud=client.issuer,
        nonce=nonce,
    )
    session = new_session(
        _store(),
        {
            "stage": "authorizing",
            "iss": client.issuer,
            "state": state,
            "code_verifier": verifier,
            "nonce": nonce,
            "scope": scope,
            "token_endpoint": config["token_endpoint"],
            "jwks_uri": config.get("jwks_uri"),
            "issuer": issuer if isinstance(issuer, str) and issuer else client.issuer,
        },
        _now(),
    )
    response = cast(Response, redirect(url, 302))
    set_session_cookie(response, session)
    return page_headers(response)


@blueprint.get("/callback")
def callback() -> Response:
    session = current_session()
    pending = session.data
    if pending.get("stage") != "authorizing":
        raise SmartAppError(400, *error_page("sign_in_used"))
    given_state = request.args.get("state", "")
    if not secrets.compare_digest(given_state, str(pending.get("state", ""))):
        logger.warning("documentation app callback with a state that does not match")
        raise SmartAppError(400, *error_page("state_mismatch"))
    if not take_authorization(_store(), session):
        raise SmartAppError(400, *error_page("sign_in_used"))
    if "error" in request.args or not request.args.get("code"):
        end_session(_store(), session)
        denied = request.args.get("error", "") == "access_denied"
        why = app_words()["errors"]["access_not_granted"]["why_access_denied"]
        raise SmartAppError(403, *error_page("access_not_granted", why=why if denied else ""))
    client = smart_client(current_settings(), str(pending["iss"]))
    if client is None:
        end_session(_store(), session)
        raise SmartAppError(403, *error_page("ehr_no_longer_registered"))
    token = _exchange(client, pending, request.args["code"])
    claims: dict[str, Any] = {}
    if "openid" in str(pending.get("scope", "")).split():
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SmartAppError(401, *error_page("no_identity"))
        claims = _verify_id_token(id_token, client, pending)
    access_token = token.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise SmartAppError(502, *error_page("no_access_token"))
    expires_in = token.get("expires_in")
    lifetime = (
        min(int(expires_in), SESSION_TTL_S)
        if isinstance(expires_in, int | float) and expires_in > 0
        else 3600
    )
    session.data = {
        "stage": "authorized",
        "iss": client.issuer,
        "access_token": access_token,
        "scope": token.get("scope") or pending.get("scope"),
        "patient": token.get("patient"),
        "encounter": token.get("encounter"),
        "fhir_context": token.get("fhirContext") or [],
        "app_context": token.get("appContext"),
        "fhir_user": claims.get("fhirUser") or token.get("fhirUser"),
        "csrf": secrets.token_urlsafe(32),
    }
    session.expires_at = _now() + timedelta(seconds=lifetime)
    save_session(_store(), session)
    logger.info("documentation app session started for an EHR user")
    return page_headers(cast(Response, redirect("/dtr/form", 303)))


def _exchange(client: SmartClient, pending: Mapping[str, Any], code: str) -> dict[str, Any]:
    """The token response for ``code`` (the PKCE verifier sent along)."""
    token_endpoint = str(pending["token_endpoint"])
    extra = _client_assertion(client, token_endpoint) if client.private_key else {}
    from authlib.common.errors import AuthlibBaseError

    timeout = _call_limits().call_timeout_s
    try:
        token = _oauth(client).fetch_token(
            token_endpoint,
            code=code,
            code_verifier=pending["code_verifier"],
            timeout=(timeout, timeout),
            allow_redirects=False,
            **extra,
        )
    except (AuthlibBaseError, requests.RequestException, ValueError) as exc:
        logger.warning("documentation app: code exchange failed (%s)", type(exc).__name__)
        raise SmartAppError(502, *error_page("code_not_exchanged")) from None
    return dict(token)


def parse_app_context(raw: Any) -> dict[str, Any]:
    """``appContext`` (a JSON string, by SMART) as an object; empty when it is not one."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def context_references(fhir_context: Any) -> list[str]:
    """The references of ``fhirContext``: strings (SMART 2.0) or objects with a
    ``reference`` (2.1 and later)."""
    found: list[str] = []
    for entry in fhir_context if isinstance(fhir_context, list) else []:
        reference = entry.get("reference") if isinstance(entry, dict) else entry
        if isinstance(reference, str) and reference and reference not in found:
            found.append(reference)
    return found


# -- the form ------------------------------------------------------------------------------


def _policy() -> Policy:
    return cast(Policy, current_app.extensions["cds_policy"])


def _form_state(session: AppSession) -> dict[str, Any]:
    """The form's state, opened (the order and the record read, decided) on first use."""
    state = session.data.get("form")
    if isinstance(state, dict):
        return state
    data = session.data
    context = launch_context(
        data,
        context_references(data.get("fhir_context")),
        parse_app_context(data.get("app_context")),
    )
    started = time.monotonic()
    try:
        opened = open_form(_policy(), current_settings(), _store(), data, context, _now().date())
    except FormUnavailable as exc:
        raise SmartAppError(exc.status, exc.title, exc.message) from None
    note = None
    if opened.source == "audit":
        note = app_words()["audit_note"].format(assertion_id=opened.knowledge.assertion_id)
    state = {
        "knowledge": knowledge_to_json(opened.knowledge),
        "source": opened.source,
        "order_text": opened.order_text,
        "record_shows": list(opened.shown_in_record),
        "note": note,
        "patient": context.patient,
        "author": context.fhir_user,
        "shown": [],
        "answers": {},
        "qr_id": None,
        "status": None,
        "opened_ms": round((time.monotonic() - started) * 1000),
    }
    session.data["form"] = state
    save_session(_store(), session)
    logger.info(
        "documentation app form opened from the %s in %d ms", opened.source, state["opened_ms"]
    )
    return state


def _response(state: Mapping[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    known = knowledge_from_json(state["knowledge"])
    return response_resource(
        _policy(),
        served_forms()[known.rule_ids[0]],
        known,
        patient=state["patient"],
        author=state["author"],
        shown=list(state["shown"]),
        answers=state["answers"],
        status=status,
        resource_id=state["qr_id"],
        authored=_now(),
        **extra,
    )


def _step(state: dict[str, Any]) -> Step:
    """Decide on the answers so far; the questions shown become those answered and
    those still open."""
    known = knowledge_from_json(state["knowledge"])
    done = walk(
        _policy(), known, _response({**state, "shown": list(state["answers"])}, "in-progress")
    )
    shown = [i for i in state["shown"] if i in state["answers"]]
    shown += [i for i in state["answers"] if i not in shown]
    shown += [item.id for item in done.asked if item.id not in shown]
    state["shown"] = shown
    return done


def _sentence(state: Mapping[str, Any], done: Step) -> str:
    words = app_words()
    outcome, count = done.decision.outcome, len(done.asked)
    if outcome in (Outcome.COVERED, Outcome.NOT_COVERED):
        so_far = words["so_far"][outcome.value]
    elif count:
        so_far = words["so_far"]["asked_one" if count == 1 else "asked_many"].format(count=count)
    else:
        so_far = words["so_far"]["nothing_to_ask"]
    return str(words["sentence"].format(order=state["order_text"], so_far=so_far))


def _reasons(done: Step) -> list[dict[str, Any]]:
    truth_words = app_words()["truth"]
    sections = []
    for result in done.decision.deciding_results:
        sections.append(
            {
                "title": result.rule.title,
                "message": result.rule.messages.get(result.outcome.value, ""),
                "criteria": [
                    {
                        "text": r.criterion.text,
                        "truth": truth_words[r.truth.value if r.checked else "not-checked"],
                    }
                    for r in result.results
                    if r.deciding
                ],
            }
        )
    return sections


def _questions(state: Mapping[str, Any], done: Step) -> list[dict[str, Any]]:
    policy = _policy()
    open_ids = {item.id for item in done.asked}
    return [
        {
            "item": policy.documentation[link_id],
            "value": field_value(state["answers"].get(link_id)),
            "answered": link_id not in open_ids,
        }
        for link_id in state["shown"]
    ]


def _check_csrf(session: AppSession) -> None:
    given = request.form.get("csrf", "")
    if not secrets.compare_digest(given, str(session.data.get("csrf", ""))):
        raise SmartAppError(403, *error_page("form_expired"))


@blueprint.get("/form")
def show_form() -> Response:
    session = current_session("authorized")
    state = _form_state(session)
    done = _step(state)
    save_session(_store(), session)
    return page(
        "dtr_form.html",
        sentence=_sentence(state, done),
        state=state,
        questions=_questions(state, done),
        csrf=session.data["csrf"],
        errors=[],
        finished=done.finished,
    )


@blueprint.post("/form")
def save_form() -> Response:
    session = current_session("authorized")
    _check_csrf(session)
    state = _form_state(session)
    policy = _policy()
    _step(state)
    errors = []
    words = app_words()
    for link_id in list(state["shown"]):
        item = policy.documentation[link_id]
        raw = request.form.get(f"q-{link_id}", "")
        value = answer_json(item, raw)
        if value is None and raw.strip():
            wants = words["field_wants"]
            wanted = wants.get(item.answer_type, wants["choice"])
            errors.append(words["field_error"].format(question=item.text, wanted=wanted))
            continue
        if value is None:
            state["answers"].pop(link_id, None)
        else:
            state["answers"][link_id] = value
    done = _step(state)
    if errors:
        save_session(_store(), session)
        return page(
            "dtr_form.html",
            400,
            sentence=_sentence(state, done),
            state=state,
            questions=_questions(state, done),
            csrf=session.data["csrf"],
            errors=errors,
            finished=done.finished,
        )
    finishing = request.form.get("action") == "finish"
    completed = None
    known = knowledge_from_json(state["knowledge"])
    if finishing and done.finished and done.asserts:
        completed = completed_coverage(policy, known, done.decision, known.coverage)
    status = "completed" if finishing else "in-progress"
    resource = _response(state, status, coverage_information=completed[0] if completed else None)
    save_session(_store(), session)  # the answers are kept even if the EHR fails now
    try:
        saved = write_response(
            str(session.data["iss"]),
            str(session.data["access_token"]),
            resource,
            current_settings(),
        )
    except FhirQueryFailed as exc:
        logger.warning("documentation app: response not saved to the EHR (%s)", exc.detail)
        raise SmartAppError(502, *error_page("not_saved", reason=exc.reason)) from None
    state["qr_id"], state["status"] = saved, status
    save_session(_store(), session)
    if completed is not None:
        # The decision the form asserted, under its new coverage-assertion-id (no PHI).
        record_dtr_call(
            "documentation-app",
            str(session.data["iss"]),
            0.0,
            known.crd_version or "",
            (decision_record(done.decision, completed[1], known.orders, known.order_facts),),
        )
    logger.info("documentation app saved a %s response (%d answers)", status, len(state["answers"]))
    return page_headers(cast(Response, redirect("/dtr/done" if finishing else "/dtr/form", 303)))


@blueprint.get("/done")
def show_result() -> Response:
    session = current_session("authorized")
    state = session.data.get("form")
    if not isinstance(state, dict) or state.get("status") != "completed":
        return page_headers(cast(Response, redirect("/dtr/form", 303)))
    done = _step(state)
    return page(
        "dtr_done.html",
        state=state,
        outcome=done.decision.outcome.value,
        asserts=done.asserts,
        reasons=_reasons(done),
        sentence=_sentence(state, done),
    )
