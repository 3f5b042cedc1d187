"""The service's settings as one typed, frozen object, built once by ``create_app``.

``load_settings`` (``cds_service.config``) merges the defaults, the ``CDS_*`` environment
and the caller's mapping and checks them; ``Settings`` freezes the result as one typed
attribute per setting, named as the environment spells it without ``CDS_``, in snake case
(``CDS_PAYER_NAME`` is ``settings.payer_name``), and builds what the request path needs
from them once: the FHIR query limits (and the size of the query pool). Every module
takes ``Settings`` and reads its attributes; ``current_settings`` is the app's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, cast

from flask import Flask, current_app

from cds_service.config import DEFAULTS, load_settings
from cds_service.fhir_client import FhirQueryLimits

# Per client: {"jwks": ..., "jwks_url": ..., ...} as the configuration spells it.
Registrations = Mapping[str, Mapping[str, Any]]


def _frozen(value: Any) -> Registrations:
    return MappingProxyType(dict(value))


def _read_as(default: Any, value: Any) -> Any:
    """A checked setting frozen as its default's type says: a JSON object read-only, a
    list as a tuple of strings; numbers and strings as they are."""
    if isinstance(default, dict):
        return _frozen(value)
    if isinstance(default, list):
        return tuple(str(item) for item in value)
    return value


@dataclass(frozen=True, slots=True, eq=False)
class Settings:
    """Checked settings, read-only: one typed attribute per ``CDS_*`` setting."""

    auth: Literal["required", "optional"]
    # Key sets and client secrets: kept out of repr (and so out of logs).
    trusted_issuers: Registrations = field(repr=False)
    backend_clients: Registrations = field(repr=False)
    fhir_servers: tuple[str, ...]
    public_url: str
    database_url: str = field(repr=False)  # may carry a password
    audit_sync: Literal["normal", "full"]
    payer_name: str
    fhir_deadline_s: float
    fhir_call_timeout_s: float
    fhir_max_pages: int
    fhir_max_response_bytes: int
    fhir_query_threads: int
    fhir_queries_per_call: int
    jwks_refresh_interval_s: float
    max_request_bytes: int
    cors_origins: tuple[str, ...]
    decision_page_ttl_s: float
    request_read_timeout_s: float
    keepalive_s: int
    max_connections: int
    rate_limit_per_s: float
    rate_limit_burst: int
    forwarded_for_hops: int
    metrics_allow: tuple[str, ...]
    log_format: Literal["text", "json"]
    audit_retention_days: int
    smart_clients: Registrations = field(repr=False)
    dtr_card_link: bool  # CDS_DTR_CARD_LINK=on
    fhir_limits: FhirQueryLimits = field(init=False)

    def __post_init__(self) -> None:
        limits = FhirQueryLimits(
            deadline_s=self.fhir_deadline_s,
            call_timeout_s=self.fhir_call_timeout_s,
            max_pages=self.fhir_max_pages,
            max_response_bytes=self.fhir_max_response_bytes,
            queries_per_call=self.fhir_queries_per_call,
            pool_threads=self.fhir_query_threads,
        )
        object.__setattr__(self, "fhir_limits", limits)

    @property
    def auth_required(self) -> bool:
        """Every service and feedback call must carry a valid client JWT."""
        return self.auth == "required"

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Settings:
        """Freeze settings ``load_settings`` checked: each read as its default's type
        (a JSON object as a read-only mapping, a list as a tuple), ``CDS_DTR_CARD_LINK``
        as whether it is ``on``."""
        given = {
            f.name: _read_as(DEFAULTS[f.name.upper()], values[f.name.upper()])
            for f in fields(cls)
            if f.init
        }
        given["dtr_card_link"] = values["DTR_CARD_LINK"] == "on"
        return cls(**given)

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then the ``CDS_*`` environment, then ``overrides``: checked, frozen."""
        return cls.of(load_settings(overrides, environ))


def app_settings(app: Flask) -> Settings:
    """The settings ``create_app`` built for ``app``."""
    return cast(Settings, app.config["CDS"])


def current_settings() -> Settings:
    """The settings of the app handling the current request."""
    return app_settings(current_app)
