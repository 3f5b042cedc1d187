"""Configuration: defaults, then ``CDS_*`` environment variables, then the caller's mapping.

Production defaults are safe: client authentication required, no FHIR server trusted
with a bearer token, no CORS origin allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cds_service.smart_scopes import parse_system_scope

DEFAULTS: dict[str, Any] = {
    # "required": every service and feedback call carries a valid client JWT.
    # "optional": unsigned calls are accepted (a warning is logged); for demos and sandboxes.
    "AUTH": "required",
    # iss -> {"jwks_url": ...} or {"jwks": {...}}, optional "fhir_servers" and "jku" lists.
    "TRUSTED_ISSUERS": {},
    # DTR clients (SMART Backend Services): client id -> {"jwks": {...}} or {"jwks_url": ...},
    # and the "scopes" it may be granted (cds_service.backend_auth).
    "BACKEND_CLIENTS": {},
    # Base URL prefixes the service may call with a bearer token when no issuer list applies.
    "FHIR_SERVERS": [],
    # Public base URL (scheme://host[:port][/prefix]) used for the JWT aud check behind a proxy.
    "PUBLIC_URL": "",
    # SQLAlchemy URL of the feedback/audit store; empty means a SQLite file in the instance folder.
    "DATABASE_URL": "",
    # SQLite audit commits: "normal" (a killed process loses no acknowledged call; a power
    # loss may lose the last ones) or "full" (fsync every commit: survives power loss).
    "AUDIT_SYNC": "normal",
    # The insurer name shown to clinicians as card source.label (CRD resp-4).
    "PAYER_NAME": "Medicare Advantage Plan",
    # One deadline for all FHIR queries of a request, and the timeout of each call.
    "FHIR_DEADLINE_S": 3.0,
    "FHIR_CALL_TIMEOUT_S": 2.0,
    # Limits on what one query may bring back: pages followed, bytes per response.
    "FHIR_MAX_PAGES": 20,
    "FHIR_MAX_RESPONSE_BYTES": 16 * 1024 * 1024,
    # Threads of each process's FHIR query pool, shared by its calls, and the most queries
    # one call runs at once on it (fewer than the threads: a call to a hung server never
    # holds them all).
    "FHIR_QUERY_THREADS": 64,
    "FHIR_QUERIES_PER_CALL": 16,
    # Fewest seconds between two fetches of an issuer's JWKS to look for an unknown kid.
    "JWKS_REFRESH_INTERVAL_S": 60.0,
    # Largest request body accepted (413 beyond): a whole patient record as prefetch fits.
    "MAX_REQUEST_BYTES": 10 * 1024 * 1024,
    # Origins allowed to call from a browser (e.g. the CDS Hooks sandbox).
    "CORS_ORIGINS": [],
    # How long the decision page a coverage card links to stays readable.
    "DECISION_PAGE_TTL_S": 7 * 24 * 3600.0,
    # `serve`: the whole request body must arrive within this (408 beyond), however slowly
    # the client sends it.
    "REQUEST_READ_TIMEOUT_S": 10.0,
    # `serve`: request line and headers must arrive within this, and an idle kept-alive
    # connection is closed after it (whole seconds).
    "KEEPALIVE_S": 5,
    # `serve`: most connections one worker process holds at once (slow and idle ones too).
    "MAX_CONNECTIONS": 1000,
    # Calls per second one client (JWT iss, or address when unsigned) may make to one worker
    # process, and the burst it may send at once; beyond, 429 with Retry-After. 0: no limit.
    "RATE_LIMIT_PER_S": 20.0,
    "RATE_LIMIT_BURST": 40,
    # Proxies in front whose X-Forwarded-For names the client address (0: the peer address).
    "FORWARDED_FOR_HOPS": 0,
    # Addresses or networks allowed to read GET /metrics (and every proxy hop they came by).
    "METRICS_ALLOW": ["127.0.0.0/8", "::1"],
    # "text": human-readable log lines; "json": one JSON object per line (with hookInstance).
    "LOG_FORMAT": "text",
    # Days the audit trail is kept (10 years: 42 CFR 422.504(d)); older calls are removed.
    "AUDIT_RETENTION_DAYS": 3653,
    # The documentation app (/dtr/launch): EHR issuer (its FHIR base URL) -> the app's
    # registration there: {"client_id": ..., optional "client_secret" or
    # "jwks_private_key" (a private JWK) for a confidential client, optional "scope",
    # optional "frame_origins" (EHR origins that may embed the app in a frame)}.
    "SMART_CLIENTS": {},
    # "on": the documentation card carries a `smart` link to the documentation app.
    "DTR_CARD_LINK": "off",
}

# Each setting is read as its default's type: a list (comma-separated in the environment),
# a JSON object (inline or a file path), a number of its kind, or a string.
_LIST_KEYS = {key for key, default in DEFAULTS.items() if isinstance(default, list)}
_JSON_KEYS = {key for key, default in DEFAULTS.items() if isinstance(default, dict)}
_FLOAT_KEYS = {key for key, default in DEFAULTS.items() if isinstance(default, float)}
_INT_KEYS = {
    key
    for key, default in DEFAULTS.items()
    if isinstance(default, int) and not isinstance(default, bool)
}
# Numeric settings for which 0 is meaningful (no limit, no proxy).
_MAY_BE_ZERO = {"RATE_LIMIT_PER_S", "FORWARDED_FOR_HOPS"}


class ConfigError(ValueError):
    """A setting has a value the service cannot run with (raised at start-up)."""


def _parse_env_value(key: str, raw: str) -> Any:
    if key in _LIST_KEYS:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if key in _FLOAT_KEYS:
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"CDS_{key} must be a number") from exc
    if key in _INT_KEYS:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"CDS_{key} must be a whole number") from exc
    if key in _JSON_KEYS:
        text = raw
        if not raw.lstrip().startswith("{"):
            try:
                text = Path(raw).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"CDS_{key}: cannot read {raw}") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CDS_{key} is not valid JSON") from exc
    return raw


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Merge defaults, ``CDS_*`` environment variables and ``overrides``, then check them."""
    environ = os.environ if environ is None else environ
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        raw = environ.get(f"CDS_{key}")
        if raw is not None and raw != "":
            settings[key] = _parse_env_value(key, raw)
    for key, value in (overrides or {}).items():
        settings[key] = value
    _check_types(settings)
    if settings["AUTH"] not in ("required", "optional"):
        raise ConfigError("CDS_AUTH must be 'required' or 'optional'")
    if settings["AUDIT_SYNC"] not in ("normal", "full"):
        raise ConfigError("CDS_AUDIT_SYNC must be 'normal' or 'full'")
    for key in (*_FLOAT_KEYS, *_INT_KEYS):
        value = settings[key]
        if value < 0 or (value == 0 and key not in _MAY_BE_ZERO):
            raise ConfigError(f"CDS_{key} must be a positive number")
    if settings["FHIR_QUERIES_PER_CALL"] >= settings["FHIR_QUERY_THREADS"]:
        raise ConfigError(
            "CDS_FHIR_QUERIES_PER_CALL must be fewer than CDS_FHIR_QUERY_THREADS, so that "
            "one call cannot hold every query thread"
        )
    _check_trusted_issuers(settings["TRUSTED_ISSUERS"])
    if settings["DTR_CARD_LINK"] not in ("on", "off"):
        raise ConfigError("CDS_DTR_CARD_LINK must be 'on' or 'off'")
    if settings["LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError("CDS_LOG_FORMAT must be 'text' or 'json'")
    _check_smart_clients(settings["SMART_CLIENTS"])
    _check_backend_clients(settings["BACKEND_CLIENTS"])
    if "*" in settings["CORS_ORIGINS"]:
        raise ConfigError("CDS_CORS_ORIGINS must list origins; '*' is not allowed")
    return settings


def _check_types(settings: dict[str, Any]) -> None:
    """Each setting has its default's type, whichever way it came: a whole number where
    the default is one, a number where it is a float (read as that float), a list of
    strings, a string. (Each JSON object setting has a check of its own.)"""
    for key, default in DEFAULTS.items():
        value = settings[key]
        if key in _FLOAT_KEYS:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"CDS_{key} must be a number")
            settings[key] = float(value)
        elif key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"CDS_{key} must be a whole number")
        elif key in _LIST_KEYS:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"CDS_{key} must be a list of strings")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"CDS_{key} must be a string")


def _check_key_sources(name: str, owner: str, entry: dict[str, Any]) -> None:
    """The public keys ``owner`` (an issuer of ``CDS_TRUSTED_ISSUERS``, a client of
    ``CDS_BACKEND_CLIENTS``) signs with, in whichever of its sources ``entry`` names:
    ``jwks``, an inline JWK Set of public keys only; ``jwks_url``, an https URL (plain
    http only on loopback) of one; ``jku``, a list of such URLs its tokens may name."""
    # Here, not at the top: fhir_client reads this module's DEFAULTS when it loads.
    from cds_service.fhir_client import https_or_loopback

    if "jwks" in entry:
        jwks = entry["jwks"]
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
            raise ConfigError(f"{name}: {owner!r} 'jwks' must be a JWK Set {{\"keys\": [...]}}")
        if any(key.get("kty") == "oct" or "d" in key for key in keys):
            raise ConfigError(
                f"{name}: {owner!r} 'jwks' holds a secret or private key; "
                "register the public keys only"
            )
    if "jwks_url" in entry and not https_or_loopback(entry["jwks_url"]):
        raise ConfigError(
            f"{name}: {owner!r} 'jwks_url' must be an https URL (plain http only on loopback)"
        )
    if "jku" in entry and not (
        _strings(entry["jku"]) and all(map(https_or_loopback, entry["jku"]))
    ):
        raise ConfigError(
            f"{name}: {owner!r} 'jku' must be a list of https URLs (plain http only on loopback)"
        )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_trusted_issuers(issuers: Any) -> None:
    """``CDS_TRUSTED_ISSUERS``: each issuer maps to its keys (``_check_key_sources``) and,
    optionally, the ``fhir_servers`` list of base URL prefixes its calls may point the
    service at."""
    name = "CDS_TRUSTED_ISSUERS"
    if not isinstance(issuers, dict):
        raise ConfigError(f"{name} must map each issuer to its keys")
    for issuer, entry in issuers.items():
        if not isinstance(entry, dict) or not ({"jwks", "jwks_url", "jku"} & set(entry)):
            raise ConfigError(f"{name}: {issuer!r} needs 'jwks', 'jwks_url' or a 'jku' list")
        _check_key_sources(name, issuer, entry)
        if "fhir_servers" in entry and not _strings(entry["fhir_servers"]):
            raise ConfigError(f"{name}: {issuer!r} 'fhir_servers' must be a list of base URLs")


def _check_smart_clients(clients: Any) -> None:
    """Each EHR issuer of the documentation app has a client id, and at most one secret."""
    if not isinstance(clients, dict):
        raise ConfigError("CDS_SMART_CLIENTS must map each EHR issuer to its registration")
    for issuer, entry in clients.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("client_id"), str):
            raise ConfigError(f"CDS_SMART_CLIENTS: {issuer!r} needs a 'client_id'")
        if "client_secret" in entry and "jwks_private_key" in entry:
            raise ConfigError(
                f"CDS_SMART_CLIENTS: {issuer!r} has both 'client_secret' and 'jwks_private_key'"
            )
        if "jwks_private_key" in entry and not isinstance(entry["jwks_private_key"], dict):
            raise ConfigError(f"CDS_SMART_CLIENTS: {issuer!r} 'jwks_private_key' must be a JWK")
        for key in ("client_secret", "scope"):
            if key in entry and not isinstance(entry[key], str):
                raise ConfigError(f"CDS_SMART_CLIENTS: {issuer!r} '{key}' must be a string")
        origins = entry.get("frame_origins", [])
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ConfigError(f"CDS_SMART_CLIENTS: {issuer!r} 'frame_origins' must list origins")


def _check_backend_clients(clients: Any) -> None:
    """``CDS_BACKEND_CLIENTS``: each client id maps to its public keys (an inline JWK Set,
    or an https URL of one) and the non-empty list of system scopes it may be granted."""
    name = "CDS_BACKEND_CLIENTS"
    if not isinstance(clients, dict):
        raise ConfigError(f"{name} must map each client id to its keys and scopes")
    for client_id, entry in clients.items():
        if not client_id:
            raise ConfigError(f"{name}: a client id must not be empty")
        if not isinstance(entry, dict) or not ({"jwks", "jwks_url"} & set(entry)):
            raise ConfigError(f"{name}: {client_id!r} needs 'jwks' or 'jwks_url'")
        unknown = set(entry) - {"jwks", "jwks_url", "scopes"}
        if unknown:
            raise ConfigError(f"{name}: {client_id!r} has unknown keys {sorted(unknown)}")
        _check_key_sources(name, client_id, entry)
        scopes = entry.get("scopes")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(scope, str) and parse_system_scope(scope) for scope in scopes)
        ):
            raise ConfigError(
                f"{name}: {client_id!r} 'scopes' must list system scopes such as "
                "'system/Questionnaire.rs'"
            )
