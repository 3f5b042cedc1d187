"""Settings: checked once, frozen, read by typed attribute or by name."""

from __future__ import annotations

import dataclasses

import pytest

from cds_service.config import DEFAULTS, ConfigError, load_settings
from cds_service.fhir_client import FhirQueryLimits
from cds_service.settings import Settings, fhir_limits_of
from tests.conftest import make_app


def test_settings_are_typed_and_read_by_name_alike() -> None:
    settings = Settings.load(
        {"FHIR_SERVERS": ["https://ehr.example.org"], "PAYER_NAME": "Acme Health"},
        environ={"CDS_FHIR_DEADLINE_S": "1.5", "CDS_AUTH": "optional"},
    )
    assert settings.payer_name == settings["PAYER_NAME"] == "Acme Health"
    assert settings.fhir_servers == ("https://ehr.example.org",)
    assert settings.auth_required is False
    assert settings.fhir_limits == dataclasses.replace(FhirQueryLimits(), deadline_s=1.5)
    assert set(settings) == set(DEFAULTS)
    assert settings.get("NOT_A_SETTING") is None


def test_settings_cannot_be_changed() -> None:
    settings = Settings.load(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.payer_name = "Someone else"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.by_name["PAYER_NAME"] = "Someone else"  # type: ignore[index]


def test_the_fhir_limits_defaults_are_the_settings_defaults() -> None:
    assert Settings.load(environ={}).fhir_limits == FhirQueryLimits()


def test_fhir_limits_are_read_alike_from_settings_and_from_a_checked_mapping() -> None:
    environ = {"CDS_FHIR_MAX_PAGES": "3", "CDS_FHIR_QUERIES_PER_CALL": "4"}
    settings = Settings.load(environ=environ)
    assert fhir_limits_of(settings) is settings.fhir_limits
    assert fhir_limits_of(load_settings(environ=environ)) == settings.fhir_limits
    assert (settings.fhir_limits.max_pages, settings.fhir_limits.queries_per_call) == (3, 4)


def test_create_app_builds_the_settings_once() -> None:
    app = make_app({"PAYER_NAME": "Acme"})
    settings = app.config["CDS"]
    assert isinstance(settings, Settings)
    assert settings.payer_name == "Acme"
    with app.test_client() as client:
        assert client.get("/cds-services").status_code == 200
    assert app.config["CDS"] is settings


def test_a_bad_setting_stops_the_service_at_start() -> None:
    with pytest.raises(ConfigError):
        Settings.load({"FHIR_QUERY_THREADS": 4, "FHIR_QUERIES_PER_CALL": 8}, environ={})
