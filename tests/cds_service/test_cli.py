"""The command line: ``infusion-pump-cds policy show``."""

from __future__ import annotations

import json

import pytest

from cds_service.cli import main
from coverage_policy.loader import load_policy


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
