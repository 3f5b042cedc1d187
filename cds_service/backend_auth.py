"""SMART Backend Services for the payer FHIR endpoints: how a DTR client gets an access
token and how a route checks it (Da Vinci DTR 2.0.1; SMART App Launch 2.x, "Backend
Services"; RFC 6749, RFC 7521, RFC 7523).

Getting a token: ``POST /auth/token``, an ``application/x-www-form-urlencoded`` form with
``grant_type=client_credentials``, ``scope`` (space-separated),
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
``client_assertion``, a JWT the client signed. The assertion is accepted when all of
these hold:

- header: ``alg`` is RS384 or ES384 (RS256 and ES256 are accepted too, as for service
  calls); ``kid`` names a key of the client's JWK Set from ``CDS_BACKEND_CLIENTS`` (inline
  ``jwks``, or ``jwks_url`` fetched through the service's JWKS cache, ``auth.JwksCache``);
  a ``jku`` header, if sent, is the client's registered ``jwks_url`` (SMART: any other
  ``jku`` fails);
- ``iss`` and ``sub`` are both the id of a registered client (so is the ``client_id``
  parameter, when sent);
- the signature verifies with that key (PyJWT); ``aud`` is this token endpoint's URL,
  ``[CDS_PUBLIC_URL, else the request's base URL]/auth/token``;
- ``exp`` has not passed and is at most five minutes ahead, each give or take the 60 s
  of clock skew service calls get; ``iat`` and ``nbf``, when sent, are not in the future;
- ``jti`` was never used by this client before: it goes into the JWT replay cache of the
  shared database (``cds_service.replay``), so every worker and replica agrees.

The scopes granted are the requested ones that one of the client's configured scopes
covers (``cds_service.smart_scopes``: case-insensitive, SMART v1 ``.read`` is ``.rs``);
when none is, the request is refused ``invalid_scope``. The answer, ``Cache-Control:
no-store``, is ``{"access_token", "token_type": "bearer", "expires_in": 300, "scope"}``.

Refusals are RFC 6749 section 5.2 JSON bodies ``{"error", "error_description"}`` (also
``no-store``), as OAuth clients expect from a token endpoint; the FHIR endpoints answer
with OperationOutcomes:

    invalid_request          400  not a form; a parameter missing or sent twice
    unsupported_grant_type   400  grant_type is not client_credentials
    invalid_client           401  no client assertion, one of another type, or one that
                                   fails a rule above (RFC 7523 section 3.2)
    invalid_scope            400  no requested scope may be granted to this client
    temporarily_unavailable  503  the database cannot be used (a replay cannot be told)

``invalid_grant`` is never answered: a ``client_credentials`` grant carries nothing but
the client's own authentication. Neither an assertion nor a token is ever logged or
echoed; a refusal's specific reason is logged at info with the claimed client id.

Tokens are opaque random strings (256 bits). The shared database (``cds_service.store``,
table ``backend_access_token``) keeps only their SHA-256, with the client id, the
granted scopes and the expiry, so any replica verifies any token with one indexed read.
This is chosen over self-contained signed tokens because it needs no key management: no
signing key to generate, hand to every replica, publish and rotate. Expired rows are
dropped whenever a token is issued and by the retention sweep (``cds_service.retention``).

Protecting a route (the payer FHIR operations):

    @blueprint.post("/Questionnaire/$questionnaire-package")
    @payer_scope_required("Questionnaire")
    def questionnaire_package() -> Response:
        client = current_backend_client()  # None: an unauthenticated CDS_AUTH=optional call
        ...

or, inside a view, ``refusal = require_payer_scope("Questionnaire")``, returned when it is
not None. Under ``CDS_AUTH=required`` a call without a bearer token, or with one that is
unknown, expired or issued to a client no longer registered, is refused 401
(OperationOutcome, ``WWW-Authenticate: Bearer``); a
token without ``system/<type>.rs`` (or ``.read``, ``system/*.rs``, or a broader scope) is
refused 403. Under ``CDS_AUTH=optional`` a call without a token goes through with a
warning logged, as unsigned service calls do; a token that is sent is still checked.

``GET /fhir/.well-known/smart-configuration`` (and ``/.well-known/smart-configuration``)
advertises the token endpoint and what it supports.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import jwt
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from cds_service.auth import (
    ALLOWED_ALGORITHMS,
    CLOCK_SKEW_S,
    JwksCache,
    find_key,
    find_key_at,
    is_number,
    verification_key,
)
from cds_service.errors import (
    ClientAuthenticationFailed,
    ServiceUnavailable,
    TokenRequestRefused,
    operation_outcome,
)
from cds_service.routes import public_base_url
from cds_service.settings import current_settings
from cds_service.smart_scopes import granted_scopes, scopes_permit
from cds_service.store import Store
from cds_service.tables import backend_access_token

logger = logging.getLogger(__name__)

blueprint = Blueprint("backend_auth", __name__)

TOKEN_PATH = "/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_LIFETIME_S = 300
# SMART Backend Services: the assertion's exp is no more than five minutes in the future.
MAX_ASSERTION_LIFETIME_S = 300
MAX_ASSERTION_CHARS = 16 * 1024
MAX_SCOPE_CHARS = 2048
# Our tokens are 43 characters; anything much longer is not one and is not looked up.
MAX_TOKEN_CHARS = 256
# What DTR clients ask for (DTR 2.0.1 spells them in lower case; compared without case).
PAYER_SCOPES = ("system/Questionnaire.rs", "system/ValueSet.rs", "system/Library.rs")
FHIR_JSON = "application/fhir+json"
CLOCK = "cds_backend_auth_clock"  # app.extensions: epoch seconds, wall-clock time

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BackendClient:
    """The DTR client whose access token a call carried, and the scopes it was granted."""

    client_id: str
    scopes: str


def install_backend_auth(app: Flask) -> None:
    """Add the token endpoint and the SMART configuration to ``app``, and the sweep of
    expired tokens to its retention sweeper (when it has one). Clients' ``jwks_url`` sets
    are read through the JWKS cache ``auth.install_client_authentication`` gave ``app``."""
    app.extensions.setdefault(CLOCK, time.time)
    app.register_blueprint(blueprint)
    sweeper = app.extensions.get("cds_retention")
    if sweeper is not None:
        sweeper.expiring.append(
            functools.partial(purge_expired_access_tokens, app.extensions["cds_store"])
        )


def _now() -> float:
    return float(current_app.extensions[CLOCK]())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_endpoint_url() -> str:
    """This service's token endpoint, as clients call it (the assertion's ``aud``)."""
    return f"{public_base_url()}{TOKEN_PATH}"


# -- the SMART configuration ------------------------------------------------------------


@blueprint.get("/.well-known/smart-configuration")
@blueprint.get("/fhir/.well-known/smart-configuration")
def smart_configuration() -> Response:
    """SMART App Launch 2.x discovery, for backend services only."""
    return jsonify(
        {
            "token_endpoint": token_endpoint_url(),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
            "scopes_supported": list(PAYER_SCOPES),
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
    )


# -- the token endpoint -----------------------------------------------------------------


def _no_store(response: Response, status: int) -> Response:
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"  # RFC 6749 section 5.1
    response.headers["Pragma"] = "no-cache"
    return response


def _refused(description: str, reason: str = "") -> TokenRequestRefused:
    return TokenRequestRefused("invalid_client", description, reason)


def _shown(value: Any) -> str:
    """A claimed value as it may be logged: short, and repr-escaped."""
    return repr(value)[:120]


@blueprint.post(TOKEN_PATH)
def issue_token() -> Response:
    """RFC 6749 section 4.4 with an RFC 7523 client assertion (SMART Backend Services)."""
    claimed: Any = None
    try:
        form = _token_request_form()
        claimed = _unverified_issuer(form["client_assertion"])
        client_id = _verify_client_assertion(form, token_endpoint_url(), _now())
        entry = current_settings().backend_clients[client_id]
        granted = granted_scopes(form["scope"], list(entry["scopes"]))
        if not granted:
            raise TokenRequestRefused(
                "invalid_scope",
                "None of the requested scopes may be granted to this client; it may ask for: "
                + " ".join(entry["scopes"]),
            )
        scope = " ".join(granted)
        token = _store_token(_store(), client_id, scope, _now())
    except TokenRequestRefused as refusal:
        logger.info(
            "token request refused: %s (%s; client=%s)",
            refusal.error,
            refusal.reason,
            _shown(claimed),
        )
        body = {"error": refusal.error, "error_description": refusal.description}
        return _no_store(jsonify(body), refusal.status)
    except (ServiceUnavailable, SQLAlchemyError) as exc:
        logger.error("token request not answered: database unavailable (%s)", type(exc).__name__)
        body = {
            "error": "temporarily_unavailable",
            "error_description": "Tokens cannot be issued right now; try again later",
        }
        response = _no_store(jsonify(body), 503)
        response.headers["Retry-After"] = "10"
        return response
    logger.info(
        "access token issued to client %s (scope %s, %d s)",
        _shown(client_id),
        scope,
        ACCESS_TOKEN_LIFETIME_S,
    )
    answer = {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ACCESS_TOKEN_LIFETIME_S,
        "scope": scope,
    }
    return _no_store(jsonify(answer), 200)


def _token_request_form() -> dict[str, str]:
    """The token request's parameters, each present once; refused otherwise."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise TokenRequestRefused(
            "invalid_request",
            "The token request must be an application/x-www-form-urlencoded form "
            "(RFC 6749 section 4.4.2)",
        )
    form: dict[str, str] = {}
    for name in request.form:
        values = request.form.getlist(name)
        if len(values) > 1:
            raise TokenRequestRefused(
                "invalid_request", f"The parameter {name[:40]!r} is sent more than once"
            )
        form[name] = values[0]
    grant_type = form.get("grant_type")
    if not grant_type:
        raise TokenRequestRefused("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise TokenRequestRefused(
            "unsupported_grant_type", "Only grant_type=client_credentials is supported"
        )
    assertion_type = form.get("client_assertion_type")
    assertion = form.get("client_assertion")
    if not assertion_type and not assertion:
        raise _refused(
            "Client authentication is required: client_assertion_type "
            f"{ASSERTION_TYPE} and a signed client_assertion (private_key_jwt)",
            "no client assertion",
        )
    if not assertion_type or not assertion:
        raise TokenRequestRefused(
            "invalid_request", "client_assertion_type and client_assertion are both required"
        )
    if assertion_type != ASSERTION_TYPE:
        raise _refused(
            f"Unsupported client authentication: client_assertion_type must be {ASSERTION_TYPE}",
            "unsupported client_assertion_type",
        )
    if len(assertion) > MAX_ASSERTION_CHARS:
        raise TokenRequestRefused("invalid_request", "client_assertion is too long")
    if not form.get("scope", "").strip():
        raise TokenRequestRefused(
            "invalid_request", "scope is required, e.g. " + " ".join(PAYER_SCOPES)
        )
    if len(form["scope"]) > MAX_SCOPE_CHARS:
        raise TokenRequestRefused("invalid_request", "scope is too long")
    return form


def _unverified_issuer(assertion: str) -> Any:
    """The ``iss`` the assertion claims, for the log only (nothing is trusted from it)."""
    try:
        return jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except (jwt.PyJWTError, AttributeError):
        return None


def _verify_client_assertion(form: Mapping[str, str], token_url: str, now: float) -> str:
    """The id of the client whose assertion passes every rule of the module docstring."""
    assertion = form["client_assertion"]
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _refused("client_assertion is not a signed JWT", type(exc).__name__) from None
    algorithm = header.get("alg")
    if algorithm not in ALLOWED_ALGORITHMS:
        raise _refused(
            "client_assertion must be signed with one of " + ", ".join(ALLOWED_ALGORITHMS),
            f"algorithm {_shown(algorithm)} not accepted",
        )
    if "typ" in header and str(header["typ"]).upper() != "JWT":
        raise _refused("The client_assertion header typ must be JWT")
    issuer, subject = unverified.get("iss"), unverified.get("sub")
    if not isinstance(issuer, str) or not issuer:
        raise _refused("The client_assertion iss must be the client id")
    if subject != issuer:
        raise _refused("The client_assertion iss and sub must both be the client id")
    entry = current_settings().backend_clients.get(issuer)
    if not isinstance(entry, Mapping):
        raise _refused("Unknown client", "client not registered")
    if form.get("client_id", issuer) != issuer:
        raise _refused("client_id is not the client_assertion's iss")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refused("The client_assertion header must name its key (kid)")
    jku = header.get("jku")
    if jku is not None and jku != entry.get("jwks_url"):
        raise _refused("The client_assertion jku is not the client's registered jwks_url")
    key = _client_key(entry, kid, algorithm)
    try:
        claims = jwt.decode(
            assertion,
            key=key,
            algorithms=[algorithm],
            audience=token_url,
            issuer=issuer,
            options={
                "require": ["iss", "sub", "aud", "exp", "jti"],
                # Checked below against the service's clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                # RSA keys under 2048 bits (RFC 7518 section 3.3) are refused.
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise _refused("The client_assertion signature does not verify") from None
    except jwt.InvalidAudienceError:
        raise _refused(f"The client_assertion aud must be the token endpoint {token_url}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _refused(f"The client_assertion has no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        raise _refused("client_assertion rejected", type(exc).__name__) from None
    _check_times(claims, now)
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise _refused("The client_assertion jti must be a string of 1 to 255 characters")
    replay_cache = current_app.extensions["cds_replay_cache"]
    # Remembered as long as the assertion could still pass the exp check.
    if not replay_cache.remember(jti, issuer, float(claims["exp"]) + CLOCK_SKEW_S):
        raise _refused(
            "The client_assertion jti was already used; sign a new assertion for each request",
            f"jti {_shown(jti)} replayed",
        )
    return issuer


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    expires = claims["exp"]
    if not is_number(expires):
        raise _refused("The client_assertion exp must be a number (seconds since the epoch)")
    if expires <= now - CLOCK_SKEW_S:
        raise _refused("The client_assertion has expired")
    if expires > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
        raise _refused("The client_assertion exp must be at most five minutes ahead")
    for name in ("iat", "nbf"):
        if name in claims and (not is_number(claims[name]) or claims[name] > now + CLOCK_SKEW_S):
            raise _refused(f"The client_assertion {name} must be a time not in the future")


def _client_key(entry: Mapping[str, Any], kid: str, algorithm: str) -> jwt.PyJWK:
    """The client's public key ``kid``: from its inline JWK Set, else its ``jwks_url``."""
    found = None
    inline = entry.get("jwks")
    if isinstance(inline, Mapping):
        found = find_key(inline, kid)
    url = entry.get("jwks_url")
    if found is None and isinstance(url, str):
        cache: JwksCache = current_app.extensions["cds_jwks_cache"]
        interval = current_settings().jwks_refresh_interval_s
        try:
            found = find_key_at(url, kid, cache, interval)
        except ClientAuthenticationFailed as failure:
            raise _refused("The client's JWK Set could not be fetched", str(failure)) from None
    if found is None:
        raise _refused("No key of this client has the client_assertion's kid")
    try:
        return verification_key(found, algorithm)
    except ClientAuthenticationFailed as failure:
        raise _refused(
            "The client's key with this kid cannot verify the client_assertion", str(failure)
        ) from None


# -- the tokens in the shared database ---------------------------------------------------


def _store() -> Store:
    return current_app.extensions["cds_store"]  # type: ignore[no-any-return]


def _store_token(store: Store, client_id: str, scope: str, now: float) -> str:
    """A new access token for ``client_id``, kept (as its SHA-256) until it expires."""
    token = secrets.token_urlsafe(32)
    issued_at = datetime.fromtimestamp(now, UTC)
    table = backend_access_token
    with store.transaction() as connection:
        connection.execute(sa.delete(table).where(table.c.expires_at <= issued_at))
        connection.execute(
            table.insert().values(
                token_sha256=_digest(token),
                client_id=client_id,
                scopes=scope,
                issued_at=issued_at,
                expires_at=issued_at + timedelta(seconds=ACCESS_TOKEN_LIFETIME_S),
            )
        )
    return token


def _look_up_token(store: Store, token: str, now: float) -> BackendClient | None:
    """The client an unexpired token was issued to, while it is still registered, or None."""
    table = backend_access_token
    with store.reading() as connection:
        row = connection.execute(
            sa.select(table.c.client_id, table.c.scopes, table.c.expires_at).where(
                table.c.token_sha256 == _digest(token)
            )
        ).first()
    if row is None or row.expires_at <= datetime.fromtimestamp(now, UTC):
        return None
    if row.client_id not in current_settings().backend_clients:  # registration withdrawn since
        return None
    return BackendClient(client_id=row.client_id, scopes=row.scopes)


def purge_expired_access_tokens(store: Store, now: datetime) -> int:
    """Drop the tokens that expired before ``now``; return how many were dropped."""
    table = backend_access_token
    with store.transaction() as connection:
        return int(connection.execute(sa.delete(table).where(table.c.expires_at <= now)).rowcount)


# -- checking a token on the payer FHIR endpoints ----------------------------------------


def _fhir_refusal(status: int, diagnostics: str, code: str, challenge: str) -> Response:
    response = jsonify(operation_outcome(diagnostics, code))
    response.status_code = status
    response.mimetype = FHIR_JSON
    if challenge:
        response.headers["WWW-Authenticate"] = challenge  # RFC 6750 section 3
    return response


def current_backend_client() -> BackendClient | None:
    """The client whose token this call carried (None: no token, ``CDS_AUTH=optional``)."""
    client: BackendClient | None = g.get("cds_backend_client")
    return client


def require_payer_scope(resource_type: str) -> Response | None:
    """None when the call may read ``resource_type`` (the client is then
    ``current_backend_client()``), else the 401/403/503 answer to return."""
    g.cds_backend_client = None
    header = request.headers.get("Authorization", "").strip()
    if not header:
        if current_settings().auth_required:
            return _fhir_refusal(
                401,
                f"This operation needs an access token from {token_endpoint_url()} "
                "(SMART Backend Services)",
                "login",
                'Bearer realm="payer"',
            )
        logger.warning("unauthenticated call to %s accepted (CDS_AUTH=optional)", request.path)
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    client = None
    if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_CHARS:
        try:
            client = _look_up_token(_store(), token, _now())
        except SQLAlchemyError as exc:
            logger.error("access token not checked: database unavailable (%s)", type(exc).__name__)
            return _fhir_refusal(
                503,
                "Access tokens cannot be checked right now; try again later",
                "transient",
                "",
            )
    if client is None:
        logger.info("call to %s refused: access token unknown or expired", request.path)
        return _fhir_refusal(
            401,
            "The access token is unknown or has expired; get a new one from "
            f"{token_endpoint_url()}",
            "login",
            'Bearer realm="payer", error="invalid_token"',
        )
    if not scopes_permit(client.scopes, resource_type):
        needed = f"system/{resource_type}.rs"
        logger.info(
            "call to %s refused: client %s lacks %s", request.path, _shown(client.client_id), needed
        )
        return _fhir_refusal(
            403,
            f"The access token's scopes ({client.scopes}) do not include {needed}",
            "forbidden",
            f'Bearer realm="payer", error="insufficient_scope", scope="{needed}"',
        )
    g.cds_backend_client = client
    return None


def payer_scope_required(
    resource_type: str,
) -> Callable[[Callable[P, R]], Callable[P, R | Response]]:
    """Decorate a view so that it runs only for calls ``require_payer_scope`` lets through."""

    def decorate(view: Callable[P, R]) -> Callable[P, R | Response]:
        @functools.wraps(view)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R | Response:
            refusal = require_payer_scope(resource_type)
            if refusal is not None:
                return refusal
            return view(*args, **kwargs)

        return checked

    return decorate
