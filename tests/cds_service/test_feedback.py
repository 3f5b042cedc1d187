"""Feedback: CDS Hooks 2.0 validation, checks against issued cards, storage, statistics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from cds_service import routes
from cds_service.auth import ClientIdentity
from cds_service.errors import Unauthorized
from cds_service.feedback import feedback_stats
from cds_service.tables import feedback
from tests.builders import INSULIN_PUMP, VANCOMYCIN_PUMP, named_patient_request
from tests.conftest import FIXED_NOW, ORDER_SELECT, ORDER_SIGN

FEEDBACK = f"{ORDER_SIGN}/feedback"
WHEN = "2026-11-28T15:04:05Z"
REASON = {
    "system": "http://example.org/override-reasons",
    "code": "patient-declined",
    "display": "Patient declined",
}


@pytest.fixture
def issued(service_client: FlaskClient) -> dict[str, Any]:
    """The cards of one order-sign answer (a not-covered vancomycin pump, with
    alternatives) that feedback can be about."""
    response = service_client.post(ORDER_SIGN, json=named_patient_request(VANCOMYCIN_PUMP))
    assert response.status_code == 200
    cards = response.json["cards"]
    alternatives = next(c for c in cards if c.get("suggestions"))
    coverage = next(c for c in cards if c["source"]["topic"]["code"] == "guideline")
    return {"alternatives": alternatives, "coverage": coverage}


def _stored(service: Flask) -> list[dict[str, Any]]:
    with service.extensions["cds_store"].reading() as connection:
        return [
            dict(r)
            for r in connection.execute(sa.select(feedback).order_by(feedback.c.id)).mappings()
        ]


def _issues(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    return [(i["expression"][0], i["diagnostics"]) for i in response.json["issue"]]


def test_accepted_suggestion_is_stored_and_answered_with_an_empty_object(
    service: Flask, service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    card = issued["alternatives"]
    suggestion = card["suggestions"][1]["uuid"]
    response = service_client.post(
        FEEDBACK,
        json={
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": suggestion}],
                    "outcomeTimestamp": WHEN,
                }
            ]
        },
    )
    assert response.status_code == 200
    assert response.json == {}
    (row,) = _stored(service)
    assert row["card_uuid"] == card["uuid"]
    assert row["outcome"] == "accepted"
    assert row["accepted_suggestions"] == [suggestion]
    assert row["outcome_timestamp"] == datetime(2026, 11, 28, 15, 4, 5, tzinfo=UTC)
    assert row["received_at"] == FIXED_NOW
    assert row["client_iss"] is None
    assert row["service_id"] == "infusion-pump-coverage-order-sign"


def test_override_keeps_the_reason_code_but_never_the_comment(
    service: Flask, service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    comment = "Mrs Example prefers her old pump"
    response = service_client.post(
        FEEDBACK,
        json={
            "feedback": [
                {
                    "card": issued["coverage"]["uuid"].upper(),
                    "outcome": "overridden",
                    "overrideReason": {"reason": REASON, "userComment": comment},
                    "outcomeTimestamp": "2026-11-28t15:04:05.250+00:00",
                }
            ]
        },
    )
    assert response.status_code == 200
    (row,) = _stored(service)
    assert row["card_uuid"] == issued["coverage"]["uuid"]
    assert (row["override_system"], row["override_code"], row["override_display"]) == (
        REASON["system"],
        REASON["code"],
        REASON["display"],
    )
    assert row["has_user_comment"] is True
    assert comment not in repr(row)


def test_several_entries_and_repeated_feedback_are_all_stored(
    service: Flask, service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    entry = {
        "card": issued["coverage"]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"userComment": "x"},
        "outcomeTimestamp": WHEN,
    }
    assert service_client.post(FEEDBACK, json={"feedback": [entry, entry]}).status_code == 200
    assert service_client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 200
    assert len(_stored(service)) == 3
    assert service_client.post(FEEDBACK, json={"feedback": []}).status_code == 200
    assert len(_stored(service)) == 3


@pytest.mark.parametrize(
    ("entry", "expression", "says"),
    [
        ({"outcome": "overridden", "outcomeTimestamp": WHEN}, "feedback[0]", "'card'"),
        (
            {"card": "not-a-uuid", "outcome": "overridden", "outcomeTimestamp": WHEN},
            "feedback[0].card",
            "uuid",
        ),
        (
            {"card": "{card}", "outcome": "ignored", "outcomeTimestamp": WHEN},
            "feedback[0].outcome",
            "cds-fb-1",
        ),
        (
            {"card": "{card}", "outcome": "accepted", "outcomeTimestamp": WHEN},
            "feedback[0]",
            "cds-fb-2",
        ),
        (
            {
                "card": "{card}",
                "outcome": "accepted",
                "acceptedSuggestions": [],
                "outcomeTimestamp": WHEN,
            },
            "feedback[0].acceptedSuggestions",
            "non-empty",
        ),
        (
            {
                "card": "{card}",
                "outcome": "accepted",
                "acceptedSuggestions": [{"uuid": "x"}],
                "outcomeTimestamp": WHEN,
            },
            "feedback[0].acceptedSuggestions[0]",
            "'id'",
        ),
        (
            {
                "card": "{card}",
                "outcome": "overridden",
                "overrideReason": {},
                "outcomeTimestamp": WHEN,
            },
            "feedback[0].overrideReason",
            "cds-fb-3",
        ),
        (
            {
                "card": "{card}",
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "x"}},
                "outcomeTimestamp": WHEN,
            },
            "feedback[0].overrideReason.reason",
            "'system'",
        ),
        ({"card": "{card}", "outcome": "overridden"}, "feedback[0]", "'outcomeTimestamp'"),
        (
            {
                "card": "{card}",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-28T16:04:05+01:00",
            },
            "feedback[0].outcomeTimestamp",
            "UTC",
        ),
        (
            {"card": "{card}", "outcome": "overridden", "outcomeTimestamp": "2026-11-28"},
            "feedback[0].outcomeTimestamp",
            "RFC 3339",
        ),
        (
            {"card": "{card}", "outcome": "overridden", "outcomeTimestamp": "2026-13-45T10:00:00Z"},
            "feedback[0].outcomeTimestamp",
            "not a valid date-time",
        ),
    ],
)
def test_malformed_feedback_is_400_saying_what_and_where(
    service: Flask,
    service_client: FlaskClient,
    issued: dict[str, Any],
    entry: dict[str, Any],
    expression: str,
    says: str,
) -> None:
    entry = {k: (issued["coverage"]["uuid"] if v == "{card}" else v) for k, v in entry.items()}
    issues = _issues(service_client.post(FEEDBACK, json={"feedback": [entry]}))
    assert any(where == expression and says in text for where, text in issues), issues
    assert _stored(service) == []


@pytest.mark.parametrize(
    ("body", "expression"),
    [({}, "(request body)"), ({"feedback": {"card": "x"}}, "feedback"), ([], "(request body)")],
)
def test_a_body_without_a_feedback_array_is_400(
    service_client: FlaskClient, body: Any, expression: str
) -> None:
    assert [where for where, _ in _issues(service_client.post(FEEDBACK, json=body))] == [expression]


def test_a_body_that_is_not_json_is_400(service_client: FlaskClient) -> None:
    response = service_client.post(FEEDBACK, data=b"{feedback", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json["issue"][0]["diagnostics"]


def test_a_card_this_service_never_issued_is_400_and_nothing_is_stored(
    service: Flask, service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    unknown = "0f0f0f0f-0000-4000-8000-000000000000"
    good = {
        "card": issued["coverage"]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": REASON},
        "outcomeTimestamp": WHEN,
    }
    bad = {**good, "card": unknown}
    response = service_client.post(FEEDBACK, json={"feedback": [good, bad]})
    (issue,) = response.json["issue"]
    assert response.status_code == 400
    assert (issue["code"], issue["expression"]) == ("not-found", ["feedback[1].card"])
    assert unknown in issue["diagnostics"]
    assert _stored(service) == []


def test_a_card_issued_by_another_service_is_400(
    service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    response = service_client.post(
        f"{ORDER_SELECT}/feedback",
        json={
            "feedback": [
                {
                    "card": issued["coverage"]["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": REASON},
                    "outcomeTimestamp": WHEN,
                }
            ]
        },
    )
    ((where, text),) = _issues(response)
    assert where == "feedback[0].card"
    assert "not issued by service infusion-pump-coverage-order-select" in text
    assert "infusion-pump-coverage-order-sign" not in text  # who did issue it is not said


def test_feedback_on_a_card_issued_to_another_client_is_400(
    service: Flask, service_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card issued to one signed client takes feedback from that client only."""

    def signed_by(issuer: str) -> Any:
        return lambda settings, *, endpoint_url: ClientIdentity(issuer=issuer, jti=endpoint_url)

    monkeypatch.setattr(routes, "authenticate_client", signed_by("https://ehr-a.example.org"))
    answer = service_client.post(ORDER_SIGN, json=named_patient_request(VANCOMYCIN_PUMP)).json
    entry = {
        "card": answer["cards"][0]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": REASON},
        "outcomeTimestamp": WHEN,
    }
    monkeypatch.setattr(routes, "authenticate_client", signed_by("https://ehr-b.example.org"))
    assert service_client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 400
    monkeypatch.setattr(routes, "authenticate_client", signed_by("https://ehr-a.example.org"))
    assert service_client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 200


def test_an_accepted_suggestion_must_be_one_of_the_cards(
    service: Flask, service_client: FlaskClient, issued: dict[str, Any]
) -> None:
    other_card = issued["coverage"]
    suggestion = issued["alternatives"]["suggestions"][0]["uuid"]
    response = service_client.post(
        FEEDBACK,
        json={
            "feedback": [
                {
                    "card": other_card["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": suggestion}],
                    "outcomeTimestamp": WHEN,
                }
            ]
        },
    )
    ((where, text),) = _issues(response)
    assert where == "feedback[0].acceptedSuggestions[0].id"
    assert suggestion in text
    assert _stored(service) == []


def test_feedback_to_an_unknown_service_is_404(service_client: FlaskClient) -> None:
    response = service_client.post("/cds-services/nope/feedback", json={"feedback": []})
    assert response.status_code == 404


def test_feedback_is_authenticated_like_service_calls(
    service: Flask,
    service_client: FlaskClient,
    issued: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def authenticate(settings: Any, *, endpoint_url: str) -> ClientIdentity:
        asked.append(endpoint_url)
        return ClientIdentity(issuer="https://ehr.example.org", jti=f"jti-{len(asked)}")

    monkeypatch.setattr(routes, "authenticate_client", authenticate)
    entry = {
        "card": issued["coverage"]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": REASON},
        "outcomeTimestamp": WHEN,
    }
    assert service_client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 200
    assert asked == [f"http://localhost{FEEDBACK}"]
    assert _stored(service)[0]["client_iss"] == "https://ehr.example.org"

    def refuse(settings: Any, *, endpoint_url: str) -> ClientIdentity:
        raise Unauthorized.single("Client authentication failed")

    monkeypatch.setattr(routes, "authenticate_client", refuse)
    assert service_client.post(FEEDBACK, json={"feedback": [entry]}).status_code == 401
    assert len(_stored(service)) == 1


def test_unsigned_feedback_is_refused_when_authentication_is_required(
    make_service: Callable[..., Flask],
) -> None:
    client = make_service(AUTH="required", PUBLIC_URL="https://cds.example.org").test_client()
    response = client.post(FEEDBACK, json={"feedback": []})
    assert response.status_code == 401


def test_feedback_is_503_when_the_database_is_down(
    database_url: str,
    tmp_path: Path,
    make_service: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = (
        f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"
        if database_url.startswith("sqlite")
        else f"{database_url}_missing"
    )
    client = make_service(DATABASE_URL=down).test_client()
    response = client.post(
        FEEDBACK,
        json={
            "feedback": [
                {
                    "card": "0f0f0f0f-0000-4000-8000-000000000000",
                    "outcome": "overridden",
                    "overrideReason": {"userComment": "c"},
                    "outcomeTimestamp": WHEN,
                }
            ]
        },
    )
    assert response.status_code == 503
    assert response.json["issue"][0]["code"] == "transient"
    assert any(
        r.levelno == logging.ERROR and "NOT STORED" in r.getMessage() for r in caplog.records
    )


def test_statistics_per_rule_and_per_override_reason(
    service: Flask, service_client: FlaskClient
) -> None:
    vanco = service_client.post(ORDER_SIGN, json=named_patient_request(VANCOMYCIN_PUMP)).json
    insulin = service_client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP)).json
    alternatives = next(c for c in vanco["cards"] if c.get("suggestions"))
    vanco_coverage = next(c for c in vanco["cards"] if not c.get("suggestions"))
    insulin_coverage = insulin["cards"][0]
    other = {
        "system": "http://example.org/override-reasons",
        "code": "will-appeal",
        "display": "Will appeal",
    }
    entries = [
        {
            "card": alternatives["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": WHEN,
            "acceptedSuggestions": [{"id": alternatives["suggestions"][0]["uuid"]}],
        },
        {
            "card": vanco_coverage["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": WHEN,
            "overrideReason": {"reason": REASON},
        },
        {
            "card": insulin_coverage["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": WHEN,
            "overrideReason": {"reason": REASON},
        },
        {
            "card": insulin_coverage["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": WHEN,
            "overrideReason": {"reason": other, "userComment": "c"},
        },
        {
            "card": insulin_coverage["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-10-01T00:00:00Z",
            "overrideReason": {"userComment": "old"},
        },
    ]
    assert service_client.post(FEEDBACK, json={"feedback": entries}).status_code == 200
    store = service.extensions["cds_store"]

    everything = {r.rule: r for r in feedback_stats(store).rules}
    assert set(everything) == {"EIP-VANCO", "EIP-CSII"}
    vanco_stats, csii = everything["EIP-VANCO"], everything["EIP-CSII"]
    assert (
        vanco_stats.cards_issued,
        vanco_stats.feedback,
        vanco_stats.accepted,
        vanco_stats.overridden,
    ) == (len(vanco["cards"]), 2, 1, 1)
    assert (vanco_stats.acceptance_rate, vanco_stats.override_rate) == (0.5, 0.5)
    assert (csii.feedback, csii.accepted, csii.overridden, csii.acceptance_rate) == (3, 0, 3, 0.0)

    recent = feedback_stats(store, datetime(2026, 11, 1, tzinfo=UTC))
    assert {r.rule: r.overridden for r in recent.rules} == {"EIP-VANCO": 1, "EIP-CSII": 2}
    assert [(r.code, r.overridden, round(r.share, 3)) for r in recent.reasons] == [
        ("patient-declined", 2, 0.667),
        ("will-appeal", 1, 0.333),
    ]
    all_reasons = {r.code: r.overridden for r in feedback_stats(store).reasons}
    assert all_reasons == {"patient-declined": 2, "will-appeal": 1, None: 1}
