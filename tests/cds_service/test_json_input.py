"""Untrusted JSON: every way a text can fail to be JSON we accept is one clear refusal."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from cds_service.json_input import UnreadableJson, loads_untrusted
from tests.conftest import ORDER_SIGN

HUGE_INTEGER = "1" * 5000  # past Python's 4,300-digit integer conversion limit


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"n": ' + HUGE_INTEGER + "}", "a number has more digits than accepted"),
        ('{"n": -' + HUGE_INTEGER + "}", "a number has more digits than accepted"),
        ('{"n": NaN}', "NaN is not a JSON number"),
        ('{"n": Infinity}', "Infinity is not a JSON number"),
        ('{"n": -Infinity}', "-Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        (b"\xff\xfe\xfa", "not UTF-8"),
        ('{"n": ', "not valid JSON"),
    ],
)
def test_untrusted_json_is_refused_with_a_reason(text: str | bytes, reason: str) -> None:
    with pytest.raises(UnreadableJson) as refused:
        loads_untrusted(text)
    assert reason in refused.value.reason
    assert "set_int_max_str_digits" not in refused.value.reason


def test_json_within_limits_decodes() -> None:
    long_but_allowed = "9" * 4300
    assert loads_untrusted('{"n": ' + long_but_allowed + ', "x": 1.5e300}') == {
        "n": int(long_but_allowed),
        "x": 1.5e300,
    }


@pytest.mark.parametrize("path", [ORDER_SIGN, f"{ORDER_SIGN}/feedback"])
@pytest.mark.parametrize(
    "body",
    [
        '{"hook": "order-sign", "n": ' + HUGE_INTEGER + "}",
        '{"hook": "order-sign", "n": NaN}',
        '{"feedback": [{"card": "c", "outcome": "accepted", "n": Infinity}]}',
    ],
)
def test_requests_that_are_not_json_are_400_operation_outcomes(
    client: FlaskClient, path: str, body: str
) -> None:
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert diagnostics.startswith("The request body is not valid JSON")
    assert "set_int_max_str_digits" not in response.get_data(as_text=True)
