"""What differs between the Da Vinci CRD versions a client may ask for, in one table.

A request names its version with ``davinci-crd.requestedVersion`` (major.minor); without
one the service answers in 2.0, the dialect the CRD 2.0.1 test kit checks.

- 2.0: one ``doc-needed`` code (clinical | admin | both), card types and coverage detail
  codes from the CRD ``temp`` code system, no ``indeterminate``, no ``detail.category``,
  links in ``detail.value`` as strings (2.0.1 has no url value type there);
- 2.1: as 2.0, but ``doc-needed`` repeats;
- 2.2: card types from ``cdshooks-card-type``, detail codes from ``crd-coverage-detail``
  with a ``category``, ``indeterminate`` allowed, links as ``valueUrl``.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMP_SYSTEM = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"


@dataclass(frozen=True, slots=True)
class CrdDialect:
    version: str
    card_type_system: str
    detail_code_system: str
    detail_has_category: bool
    indeterminate_allowed: bool
    doc_needed_repeats: bool
    link_value_type: str  # the detail.value[x] a policy link is sent as


CRD_DIALECTS: dict[str, CrdDialect] = {
    "2.0": CrdDialect(
        version="2.0",
        card_type_system=TEMP_SYSTEM,
        detail_code_system=TEMP_SYSTEM,
        detail_has_category=False,
        indeterminate_allowed=False,
        doc_needed_repeats=False,
        link_value_type="valueString",
    ),
    "2.1": CrdDialect(
        version="2.1",
        card_type_system=TEMP_SYSTEM,
        detail_code_system=TEMP_SYSTEM,
        detail_has_category=False,
        indeterminate_allowed=False,
        doc_needed_repeats=True,
        link_value_type="valueString",
    ),
    "2.2": CrdDialect(
        version="2.2",
        card_type_system="http://terminology.hl7.org/CodeSystem/cdshooks-card-type",
        detail_code_system="http://terminology.hl7.org/CodeSystem/crd-coverage-detail",
        detail_has_category=True,
        indeterminate_allowed=True,
        doc_needed_repeats=True,
        link_value_type="valueUrl",
    ),
}
SUPPORTED_CRD_VERSIONS = tuple(CRD_DIALECTS)
DEFAULT_CRD_VERSION = "2.0"


def crd_dialect(requested: object) -> CrdDialect:
    """The dialect for a ``davinci-crd.requestedVersion`` value (any patch level); the
    default for a missing, malformed or unsupported one."""
    if isinstance(requested, str):
        major_minor = ".".join(requested.strip().split(".")[:2])
        if major_minor in CRD_DIALECTS:
            return CRD_DIALECTS[major_minor]
    return CRD_DIALECTS[DEFAULT_CRD_VERSION]
