"""Settings: checked once, frozen, one typed attribute per setting."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from cds_service.config import DEFAULTS, ConfigError
from cds_service.fhir_client import FhirQueryLimits
from cds_service.settings import Settings, app_settings
from tests.conftest import make_app


def test_every_setting_has_its_attribute() -> None:
    """Each ``CDS_*`` setting is read as the attribute of its name in snake case, and
    ``Settings`` holds nothing else but what is built from them."""
    names = {f.name for f in dataclasses.fields(Settings)}
    assert {key.lower() for key in DEFAULTS} == names - {"fhir_limits"}


def test_the_defaults_are_read_as_typed_attributes() -> None:
    settings = Settings.load(environ={})
    for key, default in DEFAULTS.items():
        value = getattr(settings, key.lower())
        if isinstance(default, list):
            assert value == tuple(default), key
        elif isinstance(default, dict):
            assert isinstance(value, MappingProxyType), key
            assert value == default, key
        elif key == "DTR_CARD_LINK":
            assert value is (default == "on")
        else:
            assert type(value) is type(default), key
            assert value == default, key


def test_settings_come_from_the_environment_then_the_caller() -> None:
    settings = Settings.load(
        {"FHIR_SERVERS": ["https://ehr.example.org"], "PAYER_NAME": "Acme Health"},
        environ={
            "CDS_FHIR_DEADLINE_S": "1.5",
            "CDS_AUTH": "optional",
            "CDS_PAYER_NAME": "Overridden",
            "CDS_DTR_CARD_LINK": "on",
            "CDS_METRICS_ALLOW": "10.0.0.0/8, 127.0.0.1",
            "CDS_KEEPALIVE_S": "3",
        },
    )
    assert settings.payer_name == "Acme Health"
    assert settings.fhir_servers == ("https://ehr.example.org",)
    assert settings.auth == "optional"
    assert settings.auth_required is False
    assert settings.dtr_card_link is True
    assert settings.metrics_allow == ("10.0.0.0/8", "127.0.0.1")
    assert settings.keepalive_s == 3
    assert settings.fhir_deadline_s == 1.5
    assert settings.fhir_limits == dataclasses.replace(FhirQueryLimits(), deadline_s=1.5)


def test_settings_cannot_be_changed() -> None:
    settings = Settings.load(
        {"SMART_CLIENTS": {"https://ehr.example.org": {"client_id": "app"}}}, environ={}
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.payer_name = "Someone else"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.smart_clients["https://evil.example.org"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        settings["PAYER_NAME"]  # type: ignore[index]


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings.load(
        {
            "DATABASE_URL": "postgresql://cds:hunter2@db/cds",
            "SMART_CLIENTS": {"https://ehr.example.org": {"client_id": "a", "client_secret": "s3"}},
        },
        environ={},
    )
    assert "hunter2" not in repr(settings)
    assert "s3" not in repr(settings)
    assert "payer_name='Medicare Advantage Plan'" in repr(settings)


def test_the_fhir_limits_defaults_are_the_settings_defaults() -> None:
    assert Settings.load(environ={}).fhir_limits == FhirQueryLimits()


def test_the_fhir_limits_are_built_from_the_settings() -> None:
    environ = {"CDS_FHIR_MAX_PAGES": "3", "CDS_FHIR_QUERIES_PER_CALL": "4"}
    settings = Settings.load(environ=environ)
    assert (settings.fhir_limits.max_pages, settings.fhir_limits.queries_per_call) == (3, 4)
    assert settings.fhir_limits.pool_threads == settings.fhir_query_threads


def test_create_app_builds_the_settings_once() -> None:
    app = make_app({"PAYER_NAME": "Acme"})
    settings = app_settings(app)
    assert isinstance(settings, Settings)
    assert settings.payer_name == "Acme"
    with app.test_client() as client:
        assert client.get("/cds-services").status_code == 200
    assert app_settings(app) is settings


def test_a_bad_setting_stops_the_service_at_start() -> None:
    with pytest.raises(ConfigError, match="CDS_FHIR_QUERIES_PER_CALL must be fewer"):
        Settings.load({"FHIR_QUERY_THREADS": 4, "FHIR_QUERIES_PER_CALL": 8}, environ={})


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        ({"LOG_FORMAT": "xml"}, {}, "CDS_LOG_FORMAT must be 'text' or 'json'"),
        ({}, {"CDS_LOG_FORMAT": "JSON"}, "CDS_LOG_FORMAT must be 'text' or 'json'"),
        ({"AUTH": "off"}, {}, "CDS_AUTH must be"),
        ({}, {"CDS_AUDIT_SYNC": "fsync"}, "CDS_AUDIT_SYNC must be"),
        ({"DTR_CARD_LINK": True}, {}, "CDS_DTR_CARD_LINK must be"),
    ],
)
def test_a_word_setting_outside_its_words_stops_the_start(
    overrides: dict[str, object], environ: dict[str, str], message: str
) -> None:
    """Settings that take one of a few words are checked when they load, before any part
    of the service reads them."""
    with pytest.raises(ConfigError, match=message):
        Settings.load(overrides, environ=environ)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"KEEPALIVE_S": 0.5}, "CDS_KEEPALIVE_S must be a whole number"),
        ({"FHIR_MAX_PAGES": 3.0}, "CDS_FHIR_MAX_PAGES must be a whole number"),
        ({"RATE_LIMIT_BURST": True}, "CDS_RATE_LIMIT_BURST must be a whole number"),
        ({"FHIR_DEADLINE_S": "1.5"}, "CDS_FHIR_DEADLINE_S must be a number"),
        ({"FHIR_SERVERS": "https://only.example.org"}, "CDS_FHIR_SERVERS must be a list"),
        ({"CORS_ORIGINS": ["https://a.example.org", 7]}, "CDS_CORS_ORIGINS must be a list"),
        ({"PAYER_NAME": 5}, "CDS_PAYER_NAME must be a string"),
        ({"PUBLIC_URL": None}, "CDS_PUBLIC_URL must be a string"),
    ],
)
def test_an_override_of_another_type_than_its_default_stops_the_start(
    overrides: dict[str, object], message: str
) -> None:
    """Not read as something near it: 0.5 s of keep-alive is not 0 s, a URL is not the
    list of its characters."""
    with pytest.raises(ConfigError, match=message):
        Settings.load(overrides, environ={})


def test_a_whole_number_of_seconds_is_read_as_a_float() -> None:
    settings = Settings.load({"FHIR_DEADLINE_S": 2, "RATE_LIMIT_PER_S": 0}, environ={})
    assert (settings.fhir_deadline_s, settings.rate_limit_per_s) == (2.0, 0.0)
    assert type(settings.fhir_deadline_s) is type(settings.rate_limit_per_s) is float
    assert Settings.load({"CORS_ORIGINS": ("https://a.example.org",)}, environ={}).cors_origins == (
        "https://a.example.org",
    )


@pytest.mark.parametrize("key", [key for key, value in DEFAULTS.items() if isinstance(value, list)])
def test_a_list_setting_is_read_from_a_comma_separated_environment_value(key: str) -> None:
    settings = Settings.load(environ={f"CDS_{key}": "http://127.0.0.1, ,http://[::1]:8080"})
    assert getattr(settings, key.lower()) == ("http://127.0.0.1", "http://[::1]:8080")
