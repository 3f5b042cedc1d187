"""A validated CDS Hooks service call, as the hook handlers see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hooks.crd_dialect import CrdDialect, crd_dialect

CRD_REQUESTED_VERSION = "davinci-crd.requestedVersion"
CRD_CONFIGURATION = "davinci-crd.configuration"


@dataclass(frozen=True, slots=True)
class FhirAuthorization:
    """The client's access token for ``fhirServer``; kept out of every repr and log."""

    access_token: str = field(repr=False)
    token_type: str
    scope: str
    subject: str
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class HookRequest:
    """A validated service call. ``prefetch`` holds only the keys the client sent."""

    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None
    extension: Mapping[str, Any] = field(default_factory=dict)

    @property
    def crd(self) -> CrdDialect:
        """The CRD dialect to answer in (``davinci-crd.requestedVersion``)."""
        return crd_dialect(self.extension.get(CRD_REQUESTED_VERSION))

    @property
    def crd_version(self) -> str:
        return self.crd.version

    @property
    def configuration(self) -> Mapping[str, Any]:
        """The client's ``davinci-crd.configuration`` object (empty when absent or malformed)."""
        config = self.extension.get(CRD_CONFIGURATION)
        return config if isinstance(config, dict) else {}

    @property
    def is_crd_request(self) -> bool:
        """A request that speaks Da Vinci CRD: it carries a ``davinci-crd.*`` extension."""
        return any(str(key).startswith("davinci-crd.") for key in self.extension)


@dataclass(frozen=True, slots=True)
class ClinicalInput:
    """The patient data a handler decides on, after prefetch resolution.

    ``data`` maps each prefetch key to what the client sent or the service fetched (a
    resource, a Bundle, an OperationOutcome, or None for "no data"); ``unavailable`` maps
    the keys that could be had neither way to a short reason shown to clinicians.
    """

    data: Mapping[str, Any]
    unavailable: Mapping[str, str] = field(default_factory=dict)
    fetch_seconds: float = 0.0  # time spent querying fhirServer for what was not sent

    @property
    def not_retrieved(self) -> dict[str, str]:
        """The unavailable keys a query failed to bring back (a timeout, an error, only
        part of the results), as opposed to those there was no way to fetch."""
        return retrieval_failures(self.unavailable)


def retrieval_failures(unavailable: Mapping[str, str]) -> dict[str, str]:
    """The unavailable keys whose data was there to have but could not be had or read
    (a failed query, a Bundle that cannot be read), as opposed to those never sent."""
    return {k: r for k, r in unavailable.items() if r != NOT_SENT}


# Why a prefetch key could not be had; any other reason is a technical failure.
NOT_SENT = "not sent by the EHR and not fetched"


class RequestNotAnswerable(ValueError):
    """The request is well-formed but cannot be answered as it stands."""

    def __init__(self, diagnostics: str, expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression


class CoverageProblem(RequestNotAnswerable):
    """A CRD request without exactly one usable Coverage (CRD hook-13: HTTP 400)."""


class DataUnavailable(RequestNotAnswerable):
    """Data a decision needs (the orders, or any patient data at all) is neither in the
    request nor fetchable (HTTP 412)."""
