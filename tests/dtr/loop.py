"""The documentation loop as a DTR client drives it: sign an order, ask for the package
of its context, answer each question ``$next-question`` asks until the response is
completed, then sign again with the completed response in ``questionnaireResponses``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import FIXED_NOW, ORDER_SIGN
from tests.dtr import conformance

SIGNING_DAY = FIXED_NOW.date().isoformat()  # the tests' clock
# The day the fixtures' orders are drafted: a date answered as this day is on or before
# the order, as the policy's date questions (face-to-face, lab draws) ask.
ORDERED_ON = date(2026, 11, 20)
COVERAGE_INFORMATION = (
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
)
Answer = Callable[[Mapping[str, Any]], dict[str, Any]]
# How a DTR client marks an answer the clinician typed (DTR information-origin, dtrx-1).
MANUAL_ORIGIN = {
    "url": "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin",
    "extension": [
        {"url": "source", "valueCode": "manual"},
        {
            "url": "author",
            "extension": [
                {"url": "practitioner", "valueReference": {"reference": "Practitioner/p-1"}}
            ],
        },
    ],
}


def part(extension: Mapping[str, Any], url: str) -> Any:
    for sub in extension.get("extension") or []:
        if sub["url"] == url:
            return next(v for k, v in sub.items() if k.startswith("value"))
    return None


def coverage_extensions(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for action in response.get("systemActions") or []
        for e in action["resource"].get("extension") or []
        if e["url"] == COVERAGE_INFORMATION
    ]


def sign(client: FlaskClient, body: Mapping[str, Any]) -> dict[str, Any]:
    answer = client.post(ORDER_SIGN, json=body)
    assert answer.status_code == 200, answer.get_json()
    return dict(answer.get_json())


def orders_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in body["context"]["draftOrders"]["entry"]]


def coverage_of(body: Mapping[str, Any]) -> dict[str, Any]:
    entries = body["prefetch"]["coverage"]["entry"]
    return dict(next(e["resource"] for e in entries if e["resource"]["status"] == "active"))


def package(client: FlaskClient, body: Mapping[str, Any], context: str | None, **extra: Any) -> Any:
    parameters: list[dict[str, Any]] = [{"name": "coverage", "resource": coverage_of(body)}]
    parameters += [{"name": "order", "resource": order} for order in orders_of(body)]
    if context:
        parameters.append({"name": "context", "valueString": context})
    for canonical in extra.get("questionnaires", ()):
        parameters.append({"name": "questionnaire", "valueCanonical": canonical})
    for resource in extra.get("referenced", ()):
        parameters.append({"name": "referenced", "resource": resource})
    return client.post(
        "/fhir/Questionnaire/$questionnaire-package",
        json={"resourceType": "Parameters", "parameter": parameters},
    )


# Two ways to answer every question: one that supports coverage for most rules, one
# that does not. Which outcome each reaches is the engine's; the tests compare them.
_DECIMALS = {
    "c-peptide-result": (0.3, 2.0),
    "c-peptide-lower-limit": (0.8, 0.8),
    "c-peptide-fasting-glucose": (100, 300),
    "creatinine-clearance": (90, 90),
}
_CHOICES = {
    "pump-kind": ("external", "implantable"),
    "csii-glycemic-problem": ("hba1c", "none"),
    "pump-use-setting": ("home", "institutional"),
}


def _answer(item: Mapping[str, Any], which: int) -> dict[str, Any]:
    if item["type"] == "boolean":
        return {"valueBoolean": which == 0}
    if item["type"] == "date":
        return {"valueDate": ORDERED_ON.isoformat() if which == 0 else "2001-01-01"}
    if item["type"] == "decimal":
        return {"valueDecimal": _DECIMALS[item["linkId"]][which]}
    return {"valueCoding": {"code": _CHOICES[item["linkId"]][which]}}


def favourable(item: Mapping[str, Any]) -> dict[str, Any]:
    return _answer(item, 0)


def unfavourable(item: Mapping[str, Any]) -> dict[str, Any]:
    return _answer(item, 1)


def next_question(client: FlaskClient, response: Mapping[str, Any]) -> Any:
    return client.post(
        "/fhir/Questionnaire/$next-question",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "questionnaire-response", "resource": response}],
        },
    )


def walk(
    client: FlaskClient, response: Mapping[str, Any], answer: Answer, limit: int = 40
) -> tuple[dict[str, Any], list[str]]:
    """Answer every question asked until the response is completed: the completed
    response and the linkIds asked, in order."""
    asked: list[str] = []
    current = copy.deepcopy(dict(response))
    for _ in range(limit):
        reply = next_question(client, current)
        assert reply.status_code == 200, reply.get_json()
        current = reply.get_json()["parameter"][0]["resource"]
        problems = conformance.questionnaire_response(current, completed=False)
        assert problems == [], problems
        form = current["contained"][0]
        answered = {item["linkId"] for item in current.get("item") or []}
        new = [item for item in form.get("item") or [] if item["linkId"] not in answered]
        if current["status"] == "completed":
            assert not new
            return current, asked
        assert new, "an in-progress response asks something"
        for item in new:
            asked.append(item["linkId"])
            given = {**answer(item), "extension": [MANUAL_ORIGIN]}
            current.setdefault("item", []).append(
                {"linkId": item["linkId"], "text": item["text"], "answer": [given]}
            )
    raise AssertionError("the walk did not finish")


def with_response(body: Mapping[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
    """The same order-sign request with ``response`` in its questionnaireResponses."""
    again = copy.deepcopy(dict(body))
    # Answered on the day of signing, after the orders were drafted: they count.
    saved = {**copy.deepcopy(dict(response)), "id": "dtr-answers", "authored": SIGNING_DAY}
    prefetch = again.setdefault("prefetch", {})
    bundle = prefetch.get("questionnaireResponses") or {
        "resourceType": "Bundle",
        "type": "searchset",
    }
    bundle = copy.deepcopy(bundle)
    bundle["entry"] = [*(bundle.get("entry") or []), {"resource": saved}]
    prefetch["questionnaireResponses"] = bundle
    again["hookInstance"] = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    return again
