"""Command line: ``policy show``, and ``audit show`` and ``feedback stats`` on the database
CDS_DATABASE_URL names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.cli import main
from coverage_policy.loader import load_policy
from tests.cds_service.hook_requests import INSULIN_PUMP, VANCOMYCIN_PUMP, order_sign_request
from tests.conftest import ORDER_SIGN

WHEN = "2026-11-28T15:04:05Z"


@pytest.fixture
def answered(
    service: Flask,
    service_client: FlaskClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """One recorded order-sign answer with feedback on it; CDS_DATABASE_URL names its database."""
    answer = service_client.post(ORDER_SIGN, json=order_sign_request(VANCOMYCIN_PUMP)).json
    alternatives = next(c for c in answer["cards"] if c.get("suggestions"))
    coverage = next(c for c in answer["cards"] if not c.get("suggestions"))
    feedback = [
        {
            "card": alternatives["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": WHEN,
            "acceptedSuggestions": [{"id": alternatives["suggestions"][0]["uuid"]}],
        },
        {
            "card": coverage["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": WHEN,
            "overrideReason": {
                "reason": {
                    "system": "http://example.org/r",
                    "code": "will-appeal",
                    "display": "Will appeal",
                }
            },
        },
    ]
    response = service_client.post(f"{ORDER_SIGN}/feedback", json={"feedback": feedback})
    assert response.status_code == 200
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    extension = answer["systemActions"][0]["resource"]["extension"][-1]["extension"]
    answer["assertion_id"] = next(
        e["valueString"] for e in extension if e["url"] == "coverage-assertion-id"
    )
    return answer


def test_audit_show_says_what_was_decided_and_why(
    answered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "show", answered["assertion_id"]]) == 0
    out = capsys.readouterr().out
    assert answered["assertion_id"] in out
    assert "rule EIP-VANCO: NOT-COVERED" in out
    assert "DeviceRequest/dr-vanco, MedicationRequest/mr-vanco" in out
    assert "(indication, deciding) EIP-VANCO-NOT-COVERED: unmet; evidence: no evidence" in out
    for card in answered["cards"]:
        assert card["uuid"] in out
        for suggestion in card.get("suggestions", []):
            assert f"suggestion {suggestion['uuid']}" in out


def test_audit_show_names_the_evidence_of_each_criterion(
    answered: dict[str, Any], service_client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    insulin = service_client.post(ORDER_SIGN, json=order_sign_request(INSULIN_PUMP)).json
    extension = insulin["systemActions"][0]["resource"]["extension"][-1]["extension"]
    assertion_id = next(e["valueString"] for e in extension if e["url"] == "coverage-assertion-id")
    assert main(["audit", "show", assertion_id]) == 0
    out = capsys.readouterr().out
    assert "EIP-CSII-DIABETES: met; evidence: Condition/cond-diabetes" in out
    assert "EIP-CSII-C-PEPTIDE: unknown; evidence: no evidence" in out
    assert "rule EIP-CSII: CONDITIONAL" in out


def test_audit_show_as_json(answered: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "show", answered["assertion_id"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (decided,) = report["decisions"]
    assert decided["outcome"] == "not-covered"
    assert decided["policy"]["id"] == "MCS051.01"
    assert [c["uuid"] for c in decided["cards"]] == [c["uuid"] for c in answered["cards"]]


def test_audit_show_of_an_unknown_assertion_fails(
    answered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "show", "00000000-dead-4000-8000-000000000000"]) == 1
    assert "no decision recorded" in capsys.readouterr().err


def test_feedback_stats(answered: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feedback", "stats"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("EIP-VANCO"))
    assert line.split() == [
        "EIP-VANCO",
        str(len(answered["cards"])),
        "2",
        "1",
        "1",
        "50.0%",
        "50.0%",
    ]
    assert "will-appeal (Will appeal)" in out


def test_feedback_stats_since_as_json(
    answered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["feedback", "stats", "--since", "2026-11-28", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["since"] == "2026-11-28"
    assert [(r["rule"], r["accepted"], r["overridden"]) for r in stats["rules"]] == [
        ("EIP-VANCO", 1, 1)
    ]
    assert [(r["code"], r["share"]) for r in stats["override_reasons"]] == [("will-appeal", 1.0)]
    assert main(["feedback", "stats", "--since", "2026-11-29", "--json"]) == 0
    later = json.loads(capsys.readouterr().out)
    assert later["rules"] == []
    assert later["override_reasons"] == []


def test_feedback_stats_rejects_a_bad_date(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["feedback", "stats", "--since", "yesterday"])
    assert "not a date" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_policy_show_prints_every_rule_and_criterion(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "show", "--format", fmt]) == 0
    out = capsys.readouterr().out
    policy = load_policy()
    for identifier in [*(rule.id for rule in policy.rules), *policy.criteria]:
        assert identifier in out, identifier
    if fmt == "json":
        assert json.loads(out)["version"] == policy.version


def test_policy_show_text_defaults_to_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    main(["policy", "show"])
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100


def test_policy_show_width(capsys: pytest.CaptureFixture[str]) -> None:
    main(["policy", "show", "--width", "80"])
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 80


def test_policy_show_refuses_a_too_narrow_width(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["policy", "show", "--width", "30"])
    assert exit_info.value.code == 2
    assert "at least 72" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["audit", "show", "some-id"], ["feedback", "stats"]])
def test_an_unreachable_database_is_reported_not_raised(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "unavailable" in err
    assert "Traceback" not in err
