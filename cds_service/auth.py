"""Client authentication (CDS Hooks "Trusting CDS Clients") and whom a client may send us to.

Every service call (and feedback call) carries ``Authorization: Bearer <JWT>`` signed by
the EHR. ``authenticate_client`` accepts it only when all of these hold:

- header: ``alg`` is RS384 or ES384, or RS256 or ES256 (see ``ALLOWED_ALGORITHMS``);
  ``typ`` is ``JWT``; ``kid`` names a key of the issuer's JWK Set;
- ``iss`` is a trusted issuer (``CDS_TRUSTED_ISSUERS``); the ``kid`` is looked up in the
  JWK Set at the token's ``jku`` when that exact URL is on the issuer's ``jku`` list, then
  in the issuer's configured keys: inline (``jwks``) and its ``jwks_url`` (fetched with a
  timeout, cached, re-fetched on an unknown ``kid`` at most once per
  ``CDS_JWKS_REFRESH_INTERVAL_S``). A ``jku`` that is not on the list is ignored, never
  fetched (CDS Hooks: services allowlist ``jku``; the sandbox names its own public URL);
  the configured keys still decide;
- the signature verifies with that key; ``aud`` is the URL of the endpoint called;
  ``exp`` and ``iat`` are present and right within 60 s of clock skew, and the token
  lives at most ``MAX_TOKEN_LIFETIME_S``;
- ``jti`` has not been seen before from that issuer (``ReplayCache``).

Any failure is the same bare 401 for the client; the specific reason is logged at info,
with the issuer and ``jti`` but never the token.

``CDS_AUTH=optional`` (demos, the CDS Hooks sandbox) accepts unsigned calls. A token is
still verified when it names a trusted issuer (an invalid one is refused, so a
misconfigured EHR finds out, and a valid one gets its issuer's ``fhir_servers`` list);
a token from an issuer we do not know, or one that cannot be decoded at all, is ignored
and the call is treated as unsigned (the sandbox signs with its own key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import jwt
import requests
import urllib3.exceptions
from flask import Flask, current_app, request

from cds_service import operations
from cds_service.errors import ClientAuthenticationFailed, Unauthorized
from cds_service.fhir_client import https_or_loopback, shared_session
from cds_service.json_input import UnreadableJson, loads_untrusted
from cds_service.settings import Settings, app_settings

logger = logging.getLogger(__name__)

# ES384 and RS384 are what CDS Hooks recommends. ES256 and RS256 are accepted too: they
# are strong (128-bit security), are what many EHR key stores and SMART backend clients
# use, and nothing in CDS Hooks forbids them; only "none" and symmetric (HMAC) algorithms
# are, and those never get here. The one list for every JWT the service verifies (service
# calls, backend-services client assertions, the documentation app's id_token), in the
# order SMART lists them (the token endpoint advertises it so).
ALLOWED_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
# The key type (and curve) each algorithm must be verified with.
_KEY_TYPES = {
    "ES384": ("EC", "P-384"),
    "ES256": ("EC", "P-256"),
    "RS384": ("RSA", None),
    "RS256": ("RSA", None),
}
CLOCK_SKEW_S = 60
# Replay protection remembers a jti until its token expires; this bounds that memory.
MAX_TOKEN_LIFETIME_S = 3600
JWKS_TIMEOUT_S = 2.0
JWKS_MAX_BYTES = 256 * 1024
JWKS_CACHE_TTL_S = 3600.0
FAILURE_MESSAGE = "Client authentication failed"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A client whose JWT verified: its issuer, the token's id and optional tenant."""

    issuer: str
    jti: str
    tenant: str | None = None


class ReplayCache(Protocol):
    """Remembers each (issuer, jti) until the token expires, across whatever it spans."""

    def remember(self, jti: str, iss: str, expires_at: float) -> bool:
        """Record the pair; True when it is new, False when it was seen (a replay)."""
        ...


class JwksCache:
    """JWK Sets by URL: fetched with a timeout, cached, re-fetched at a limited rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._sets: dict[str, tuple[float, dict[str, Any]]] = {}  # url -> (fetched at, jwks)
        self._failed_at: dict[str, float] = {}  # url -> when its last fetch failed
        self._lock = threading.Lock()
        self._clock = clock

    def keys(self, url: str, *, refresh: bool, refresh_interval_s: float) -> dict[str, Any]:
        """The JWK Set at ``url``; ``refresh`` re-fetches unless done too recently.

        A failed fetch is not retried within ``refresh_interval_s`` either (the cached set,
        if any, keeps serving), so forged tokens cannot make us hammer an issuer.
        """
        now = self._clock()
        with self._lock:
            cached = self._sets.get(url)
            failed_at = self._failed_at.get(url)
        if cached is not None:
            age = now - cached[0]
            if age < JWKS_CACHE_TTL_S and not (refresh and age >= refresh_interval_s):
                return cached[1]
        if failed_at is not None and now - failed_at < refresh_interval_s:
            if cached is not None:
                return cached[1]
            raise ClientAuthenticationFailed("JWKS fetch failed recently; not retried yet")
        try:
            jwks = self._fetch(url)
        except ClientAuthenticationFailed:
            with self._lock:
                self._failed_at[url] = now
            if cached is not None and now - cached[0] < JWKS_CACHE_TTL_S:
                return cached[1]
            raise
        with self._lock:
            self._sets[url] = (now, jwks)
            self._failed_at.pop(url, None)
        return jwks

    def _fetch(self, url: str) -> dict[str, Any]:
        if not https_or_loopback(url):
            raise ClientAuthenticationFailed("JWKS URL is neither https nor loopback")
        deadline = time.monotonic() + JWKS_TIMEOUT_S
        pieces: list[bytes] = []
        try:
            with shared_session().get(
                url, timeout=JWKS_TIMEOUT_S, stream=True, allow_redirects=False
            ) as response:
                if response.status_code != 200:
                    raise ClientAuthenticationFailed(f"JWKS fetch answered {response.status_code}")
                while piece := response.raw.read1(64 * 1024, decode_content=True):
                    pieces.append(piece)
                    if sum(map(len, pieces)) > JWKS_MAX_BYTES:
                        raise ClientAuthenticationFailed("JWKS too large")
                    if time.monotonic() > deadline:
                        raise ClientAuthenticationFailed("JWKS fetch too slow")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClientAuthenticationFailed(f"JWKS fetch failed: {type(exc).__name__}") from None
        body = b"".join(pieces)
        if len(body) > JWKS_MAX_BYTES:
            raise ClientAuthenticationFailed("JWKS too large")
        try:
            jwks = loads_untrusted(body)
        except UnreadableJson:
            raise ClientAuthenticationFailed("JWKS is not JSON") from None
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ClientAuthenticationFailed("JWKS has no keys")
        return jwks


def install_client_authentication(app: Flask) -> None:
    """Give ``app`` its JWKS cache unless the caller injected its own; its replay cache
    (``app.extensions["cds_replay_cache"]``, any ``ReplayCache``) is the database's."""
    settings = app_settings(app)
    if settings.auth_required and not settings.public_url:
        logger.warning(
            "CDS_PUBLIC_URL is not set: the JWT aud is checked against the "
            "request's Host header; set it in production"
        )
    app.extensions.setdefault("cds_jwks_cache", JwksCache())


def is_number(value: Any) -> bool:
    """A JSON number (RFC 7519 NumericDate); PyJWT also lets numeric strings through."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bearer_token(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_client(settings: Settings, *, endpoint_url: str) -> ClientIdentity | None:
    """The verified calling client, or None for an unsigned call ``CDS_AUTH=optional`` allows.

    Raises ``Unauthorized`` (401, the same message for every failure) otherwise.
    """
    required = settings.auth_required
    token = _bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        if required:
            _refuse("no bearer token", None, None)
        logger.warning("unsigned call to %s accepted (CDS_AUTH=optional)", endpoint_url)
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not required and (not isinstance(issuer, str) or issuer not in settings.trusted_issuers):
        logger.warning(
            "call to %s from an untrusted or unreadable token treated as unsigned "
            "(CDS_AUTH=optional)",
            endpoint_url,
        )
        return None
    try:
        return verify_client_token(
            token,
            settings,
            endpoint_url=endpoint_url,
            replay_cache=current_app.extensions["cds_replay_cache"],
            jwks_cache=current_app.extensions["cds_jwks_cache"],
        )
    except ClientAuthenticationFailed as failure:
        _refuse(
            str(failure),
            issuer if isinstance(issuer, str) else None,
            claims.get("jti") if isinstance(claims, dict) else None,
        )


def _refuse(reason: str, issuer: str | None, jti: object) -> NoReturn:
    operations.count_jwt_refusal(reason)
    logger.info(
        "client authentication failed: %s (iss=%r, jti=%r)",
        reason,
        issuer,
        jti if isinstance(jti, str) else None,
    )
    raise Unauthorized.single(FAILURE_MESSAGE)


def verify_client_token(
    token: str,
    settings: Settings,
    *,
    endpoint_url: str,
    replay_cache: ReplayCache,
    jwks_cache: JwksCache,
    now: float | None = None,
) -> ClientIdentity:
    """Check every rule of the module docstring; raise ``ClientAuthenticationFailed``."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ClientAuthenticationFailed(f"malformed token: {type(exc).__name__}") from None
    algorithm = header.get("alg")
    if algorithm not in ALLOWED_ALGORITHMS:
        raise ClientAuthenticationFailed(f"algorithm {algorithm!r} not accepted")
    if str(header.get("typ", "")).upper() != "JWT":
        raise ClientAuthenticationFailed("typ is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ClientAuthenticationFailed("no kid")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str):
        raise ClientAuthenticationFailed("no iss")
    entry = settings.trusted_issuers.get(issuer)
    if not isinstance(entry, Mapping):
        raise ClientAuthenticationFailed("issuer not trusted")

    key = _signing_key(entry, header, kid, algorithm, settings.jwks_refresh_interval_s, jwks_cache)
    current = time.time() if now is None else now
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[algorithm],
            audience=endpoint_url,
            issuer=issuer,
            leeway=CLOCK_SKEW_S,
            options={"require": ["iss", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise ClientAuthenticationFailed(f"token rejected: {type(exc).__name__}") from None
    if not all(is_number(claims[name]) for name in ("iat", "exp")):
        raise ClientAuthenticationFailed("iat or exp is not a number")
    if claims["iat"] > current + CLOCK_SKEW_S:
        raise ClientAuthenticationFailed("iat in the future")
    if claims["exp"] - current > MAX_TOKEN_LIFETIME_S:
        raise ClientAuthenticationFailed("token lives too long")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise ClientAuthenticationFailed("jti is not a string")
    # Kept as long as the token could still pass the exp check (CLOCK_SKEW_S past exp).
    if not replay_cache.remember(jti, issuer, float(claims["exp"]) + CLOCK_SKEW_S):
        raise ClientAuthenticationFailed("jti replayed")
    tenant = claims.get("tenant")
    return ClientIdentity(
        issuer=issuer, jti=jti, tenant=tenant if isinstance(tenant, str) else None
    )


def _signing_key(
    entry: Mapping[str, Any],
    header: Mapping[str, Any],
    kid: str,
    algorithm: str,
    refresh_interval_s: float,
    jwks_cache: JwksCache,
) -> jwt.PyJWK:
    """The issuer's key named ``kid``: from an allowlisted ``jku``, else its configured keys."""
    found = _find_issuer_key(entry, header.get("jku"), kid, refresh_interval_s, jwks_cache)
    if found is None:
        raise ClientAuthenticationFailed("unknown kid")
    return verification_key(found, algorithm)


def verification_key(found: Mapping[str, Any], algorithm: object) -> jwt.PyJWK:
    """A public JWK as the key that verifies ``algorithm``, or ``ClientAuthenticationFailed``
    saying why it cannot: an algorithm not in ``ALLOWED_ALGORITHMS`` (``algorithm`` may be
    any value a JWT header holds), a secret or private key, a key of another type or curve
    (or declared for another ``alg``), or one PyJWT cannot use."""
    if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
        raise ClientAuthenticationFailed(f"algorithm {algorithm!r} not accepted")
    if found.get("kty") == "oct" or "d" in found:
        raise ClientAuthenticationFailed("JWKS holds a secret or private key")
    if (
        found.get("alg", algorithm) != algorithm
        or (found.get("kty"), found.get("crv")) != _KEY_TYPES[algorithm]
    ):
        raise ClientAuthenticationFailed("key is not for the token's algorithm")
    try:
        return jwt.PyJWK(dict(found), algorithm=algorithm)
    except jwt.PyJWTError as exc:
        raise ClientAuthenticationFailed(f"unusable key: {type(exc).__name__}") from None


def _find_issuer_key(
    entry: Mapping[str, Any],
    jku: Any,
    kid: str,
    interval: float,
    jwks_cache: JwksCache,
) -> Mapping[str, Any] | None:
    """The JWK named ``kid`` in the first of the issuer's key sources that holds it.

    The sources, in order: the token's ``jku`` when the issuer's ``jku`` list names it,
    the inline ``jwks``, the ``jwks_url``. Any other ``jku`` is never fetched. (Each
    source has its shape: ``load_settings`` checked it.)
    """
    urls: list[str] = []
    if jku is not None:
        if isinstance(jku, str) and jku in entry.get("jku", ()):
            urls.append(jku)
        else:
            logger.debug("jku not on the issuer's allowlist ignored; configured keys used")
    jwks_url = entry.get("jwks_url")
    inline = entry.get("jwks")
    if not urls and jwks_url is None and inline is None:
        raise ClientAuthenticationFailed("issuer has no keys for this token")
    unreachable: ClientAuthenticationFailed | None = None
    for url in urls:
        try:
            found = find_key_at(url, kid, jwks_cache, interval)
        except ClientAuthenticationFailed as failure:  # the configured keys may still have it
            unreachable = failure
            continue
        if found is not None:
            return found
    if inline is not None:
        found = find_key(inline, kid)
        if found is not None:
            return found
    if jwks_url is not None and jwks_url not in urls:
        return find_key_at(jwks_url, kid, jwks_cache, interval)
    if unreachable is not None:
        raise unreachable
    return None


def find_key_at(
    url: str, kid: str, jwks_cache: JwksCache, interval: float
) -> Mapping[str, Any] | None:
    """The key ``kid`` of the JWK Set at ``url`` (``jwks_cache``), the set re-fetched once,
    at most every ``interval`` seconds, when it is absent (perhaps a new key); raises
    ``ClientAuthenticationFailed`` when the set cannot be had."""
    found = find_key(jwks_cache.keys(url, refresh=False, refresh_interval_s=interval), kid)
    if found is None:
        jwks = jwks_cache.keys(url, refresh=True, refresh_interval_s=interval)
        found = find_key(jwks, kid)
    return found


def find_key(jwks: Mapping[str, Any], kid: str) -> Mapping[str, Any] | None:
    """The signing key (``use`` absent or ``sig``) named ``kid`` in the JWK Set ``jwks``."""
    for key in jwks.get("keys") or []:
        if isinstance(key, Mapping) and key.get("kid") == kid and key.get("use", "sig") == "sig":
            return key
    return None
