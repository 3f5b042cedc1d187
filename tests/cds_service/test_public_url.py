"""One rule builds every absolute URL: ``CDS_PUBLIC_URL``, else the request's own host;
forwarded headers (``X-Forwarded-Host``/``-Proto``/``-Prefix``, ``Forwarded``) never,
even when ``CDS_FORWARDED_FOR_HOPS`` trusts the proxy's ``X-Forwarded-For``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import FIXTURES, ORDER_SIGN, make_app

CONDITIONAL = FIXTURES / "requests" / "order-sign__e0784-insulin__conditional.json"
FORWARDED = {
    "X-Forwarded-Host": "evil.example.net",
    "X-Forwarded-Proto": "gopher",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Port": "6666",
    "Forwarded": "host=evil.example.net;proto=gopher",
    "X-Forwarded-For": "203.0.113.7",
}


def _absolute_urls(app_settings: dict[str, Any]) -> str:
    client = make_app(app_settings).test_client()
    decided = client.post(
        ORDER_SIGN,
        data=CONDITIONAL.read_bytes(),
        headers={"Content-Type": "application/json", **FORWARDED},
    )
    assert decided.status_code == 200
    searched = client.get("/fhir/Questionnaire", headers=FORWARDED)
    assert searched.status_code == 200
    return json.dumps([decided.get_json(), searched.get_json()])


@pytest.mark.parametrize("hops", [0, 1])
def test_the_public_url_builds_every_absolute_url(hops: int) -> None:
    text = _absolute_urls({"PUBLIC_URL": "https://cds.example.org/", "FORWARDED_FOR_HOPS": hops})
    assert "https://cds.example.org/fhir/Questionnaire" in text
    assert "evil" not in text
    assert "gopher" not in text
    assert "http://localhost" not in text


def test_without_a_public_url_the_request_host_is_used_never_forwarded_headers() -> None:
    text = _absolute_urls({"FORWARDED_FOR_HOPS": 1})
    assert "http://localhost/fhir/Questionnaire" in text
    assert "evil" not in text
    assert "gopher" not in text
