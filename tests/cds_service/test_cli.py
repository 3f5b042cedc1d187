"""Command line: ``policy show``, and ``audit show`` and ``feedback stats`` on the database
CDS_DATABASE_URL names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.cli import main
from coverage_policy.loader import load_policy
from tests.builders import INSULIN_PUMP, VANCOMYCIN_PUMP, named_patient_request
from tests.conftest import ORDER_SIGN, ROOT

WHEN = "2026-11-28T15:04:05Z"


@pytest.fixture
def answered(
    service: Flask,
    service_client: FlaskClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """One recorded order-sign answer with feedback on it; CDS_DATABASE_URL names its database."""
    answer = service_client.post(ORDER_SIGN, json=named_patient_request(VANCOMYCIN_PUMP)).json
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
    insulin = service_client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP)).json
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


def test_audit_show_gives_each_criterion_its_text(
    answered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = load_policy()
    assert main(["audit", "show", answered["assertion_id"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if "EIP-VANCO-NOT-COVERED: unmet" in line)
    assert lines[row + 1].strip() == policy.criteria["EIP-VANCO-NOT-COVERED"].text
    assert main(["audit", "show", answered["assertion_id"], "--json"]) == 0
    (decided,) = json.loads(capsys.readouterr().out)["decisions"]
    assert all(c["text"] == policy.criteria[c["criterion_id"]].text for c in decided["criteria"])


def test_audit_list_finds_decisions(
    answered: dict[str, Any], service_client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    service_client.post(ORDER_SIGN, json=named_patient_request(INSULIN_PUMP))
    assert main(["audit", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 decision(s), newest first (all)")
    assert answered["assertion_id"] in out
    assert main(["audit", "list", "--outcome", "not-covered", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["decisions"]
    assert (row["coverage_assertion_id"], row["rule_id"]) == (answered["assertion_id"], "EIP-VANCO")
    assert main(["audit", "list", "--rule", "EIP-CSII", "--json"]) == 0
    assert [r["rule_id"] for r in json.loads(capsys.readouterr().out)["decisions"]] == ["EIP-CSII"]
    assert main(["audit", "list", "--since", "2026-11-29"]) == 0
    assert capsys.readouterr().out.startswith("No decisions recorded (since 2026-11-29")
    assert main(["audit", "list", "--until", "2026-11-29", "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["decisions"]) == 1


def test_audit_list_refuses_a_bad_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "list", "--outcome", "maybe"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_audit_purge(answered: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "purge", "--before", "2026-01-01"]) == 0
    assert capsys.readouterr().out.startswith("removed 0 service call(s) recorded before 2026-01")
    assert main(["audit", "purge", "--before", "2026-12-01", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would remove 1 service call(s)")
    assert main(["audit", "show", answered["assertion_id"]]) == 0  # still there
    capsys.readouterr()
    assert main(["audit", "purge", "--before", "2026-12-01"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 service call(s)")
    assert "2 feedback" in out
    assert main(["audit", "show", answered["assertion_id"]]) == 1


def test_audit_purge_by_default_keeps_the_retention_period(
    answered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "purge"]) == 0  # ten years by default: the 2026 call stays
    assert capsys.readouterr().out.startswith("removed 0 service call(s)")
    assert main(["audit", "show", answered["assertion_id"]]) == 0


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "show", "no-such-id"],
        ["audit", "list"],
        ["feedback", "stats"],
        ["evaluate", "fixtures/requests/order-sign__e0784-insulin__covered.json"],
    ],
)
def test_commands_print_no_warnings_their_user_did_not_cause(
    command: list[str], tmp_path: Any
) -> None:
    """Run as a user would (real standard error): no service log lines, no warnings."""
    env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}"}
    env.pop("CDS_AUTH", None)
    done = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = "no decision recorded with coverage-assertion-id no-such-id\n"
    assert done.stderr == (expected if command[1] == "show" else "")


def test_an_unreachable_database_is_one_line() -> None:
    env = {**os.environ, "CDS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "audit", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "unavailable" in done.stderr


@pytest.mark.parametrize("body", [b"", b"not json", b"\xff\xfe", b"[1, 2]"])
def test_evaluate_prints_the_services_answer_to_a_body_it_cannot_read(
    body: bytes, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.json"
    request.write_bytes(body)
    assert main(["evaluate", str(request)]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["resourceType"] == "OperationOutcome"
    assert answer["issue"][0]["severity"] == "error"


def test_evaluate_of_a_file_that_is_not_there(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith(f"evaluate: cannot read {tmp_path}")
