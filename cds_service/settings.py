"""The service's settings as one typed, frozen object, built once by ``create_app``.

``load_settings`` (``cds_service.config``) merges the defaults, the ``CDS_*`` environment
and the caller's mapping and checks them; ``Settings`` freezes the result and builds what
the request path needs from it once: the FHIR query limits (and the size of the query
pool) and the FHIR servers a token may go to when no issuer list applies. Every setting
can still be read by its name as the environment spells it without ``CDS_``
(``settings["PAYER_NAME"]``), so a module reading the mapping reads the same values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cds_service.config import load_settings
from cds_service.fhir_client import FhirQueryLimits


@dataclass(frozen=True, slots=True, eq=False)
class Settings(Mapping[str, Any]):
    """Checked settings, read-only: typed attributes for what each call reads, and every
    setting by name."""

    by_name: Mapping[str, Any] = field(repr=False)  # issuer key sets: kept out of logs
    auth_required: bool
    public_url: str
    payer_name: str
    fhir_servers: tuple[str, ...]
    fhir_limits: FhirQueryLimits

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Settings:
        """Freeze settings ``load_settings`` checked."""
        frozen = MappingProxyType(dict(values))
        return cls(
            by_name=frozen,
            auth_required=frozen["AUTH"] == "required",
            public_url=str(frozen["PUBLIC_URL"]),
            payer_name=str(frozen["PAYER_NAME"]),
            fhir_servers=tuple(str(prefix) for prefix in frozen["FHIR_SERVERS"]),
            fhir_limits=FhirQueryLimits.from_settings(frozen),
        )

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then the ``CDS_*`` environment, then ``overrides``: checked, frozen."""
        return cls.of(load_settings(overrides, environ))

    def __getitem__(self, key: str) -> Any:
        return self.by_name[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


def fhir_limits_of(settings: Mapping[str, Any]) -> FhirQueryLimits:
    """The FHIR query limits of ``settings``: built once when they are ``Settings``, else
    read from the mapping (settings ``load_settings`` checked)."""
    if isinstance(settings, Settings):
        return settings.fhir_limits
    return FhirQueryLimits.from_settings(settings)
