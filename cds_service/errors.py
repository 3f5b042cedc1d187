"""Errors the service answers with, each rendered as a FHIR OperationOutcome.

    CdsServiceError                 (500: never raised on purpose; the catch-all answer)
     +-- BadRequest                 400: malformed JSON, envelope or context, bad Coverage
     +-- Unauthorized               401: client JWT missing or invalid (no details given)
     +-- UnknownService             404: no such service id
     +-- PreconditionFailed         412: data the decision needs could not be had at all
     +-- TooManyRequests            429: the client is over its rate limit (with Retry-After)
     +-- ServiceUnavailable         503: the feedback/audit database cannot be used now

The OAuth token endpoint (``/auth/token``, ``cds_service.backend_auth``) answers in
OAuth's own shape, not FHIR's:

    TokenRequestRefused             400/401: an RFC 6749 error, ``{"error", "error_description"}``

Hook handlers raise ``hooks.request.RequestNotAnswerable`` subclasses, answered as
``CoverageProblem`` → 400, ``DataUnavailable`` → 412.

Failures the service absorbs, never answered as such:

    FhirQueryFailed                 a prefetch query to ``fhirServer`` failed; its key becomes
                                    unavailable with ``reason`` (shown to clinicians)
    ClientAuthenticationFailed      why a client JWT was refused (logged; the client gets a
                                    bare ``Unauthorized``)

The policy package has its own ``PolicyLoadError`` (start-up only); missing clinical data
is never an error, it is an ``unknown`` criterion and a conditional decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue: what is wrong (diagnostics) and where (expression)."""

    diagnostics: str
    expression: str | None = None
    code: str = "invalid"
    severity: str = "error"

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


@dataclass(eq=False)
class CdsServiceError(Exception):
    """Base of every error the service turns into an HTTP answer."""

    issues: list[Issue] = field(default_factory=list)
    status = 500
    default_code = "exception"

    def __post_init__(self) -> None:
        super().__init__("; ".join(issue.diagnostics for issue in self.issues))

    @classmethod
    def single(cls, diagnostics: str, expression: str | None = None) -> CdsServiceError:
        return cls([Issue(diagnostics, expression, code=cls.default_code)])

    def operation_outcome(self) -> dict[str, Any]:
        issues = self.issues or [Issue("Internal error", code=self.default_code)]
        return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class BadRequest(CdsServiceError):
    status = 400
    default_code = "invalid"


class Unauthorized(CdsServiceError):
    status = 401
    default_code = "security"


class UnknownService(CdsServiceError):
    status = 404
    default_code = "not-found"


class PreconditionFailed(CdsServiceError):
    status = 412
    default_code = "incomplete"


class TooManyRequests(CdsServiceError):
    status = 429
    default_code = "throttled"
    retry_after_s: int = 1

    @classmethod
    def after(cls, seconds: float) -> TooManyRequests:
        """Refused for now; the client may call again after ``seconds`` (whole, at least 1)."""
        wait = max(1, math.ceil(seconds))
        error = cls([Issue(f"Too many calls; retry after {wait} s", code=cls.default_code)])
        error.retry_after_s = wait
        return error


class ServiceUnavailable(CdsServiceError):
    status = 503
    default_code = "transient"


class FhirQueryFailed(Exception):
    """A query to the EHR's FHIR server gave nothing usable.

    ``reason`` is short and clinician-readable (it ends up in cards and in the CRD
    ``reason``); ``detail`` is for the log and never holds a token.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


class TokenRequestRefused(Exception):
    """A token request refused (RFC 6749 section 5.2). ``error`` is the OAuth error code,
    ``description`` what the client is told (never its assertion), ``reason`` what is logged."""

    STATUS = {
        "invalid_request": 400,
        "invalid_client": 401,
        "invalid_grant": 400,
        "unauthorized_client": 400,
        "unsupported_grant_type": 400,
        "invalid_scope": 400,
    }

    def __init__(self, error: str, description: str, reason: str = "") -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.reason = reason or description
        self.status = self.STATUS[error]


class ClientAuthenticationFailed(Exception):
    """Why a client's JWT was refused; logged at info, never shown to the client."""


def operation_outcome(diagnostics: str, code: str = "exception") -> dict[str, Any]:
    """An OperationOutcome for answers that have no exception behind them (404, 405, 500)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
