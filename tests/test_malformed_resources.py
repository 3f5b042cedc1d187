"""Malformed resources in a complete order-sign request, through the service endpoint
(the Flask app, and ``infusion-pump-cds serve`` over real HTTP): a resource whose read
elements have the wrong shape is left out and named on the card, and the rest decides
as if it were not there; never a 500.

Every shape starts from the fixture ``order-sign__e0784-insulin__covered``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from hooks.coverage_information import EXTENSION_URL
from tests.conftest import FIXTURES, ORDER_SIGN, make_app
from tests.response_validation import validate_cds_response
from tests.served_process import ServedProcess

FIXTURE = FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json"
Body = dict[str, Any]


def _base() -> Body:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _entry(body: Body, key: str, index: int) -> Body:
    return body["prefetch"][key]["entry"][index]  # type: ignore[no-any-return]


def _resource(body: Body, key: str, index: int) -> Body:
    return _entry(body, key, index)["resource"]  # type: ignore[no-any-return]


def _hba1c_coding(body: Body) -> Body:
    return _resource(body, "observations", 2)["code"]["coding"][0]  # type: ignore[no-any-return]


def _drop(key: str, index: int) -> Callable[[Body], None]:
    def drop(body: Body) -> None:
        del body["prefetch"][key]["entry"][index]

    return drop


@dataclass(frozen=True)
class Shape:
    name: str
    mutate: Callable[[Body], None]
    named: str | None  # how the card names what was left out ("Type/id at path"); None:
    # not named, because it is not recognisable as an order (ignored like one out of scope)
    same_as: Callable[[Body], None] | None  # the request it must decide like


SHAPES = [
    Shape(
        "resourceType a list",
        lambda b: _resource(b, "conditions", 0).update(resourceType=["Condition"]),
        "(none)/cond-t1dm at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "resourceType an object",
        lambda b: _resource(b, "conditions", 0).update(resourceType={"name": "Condition"}),
        "(none)/cond-t1dm at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "Bundle entry a number",
        lambda b: b["prefetch"]["conditions"].update(entry=5),
        "Bundle/(no id) at prefetch.conditions",
        None,
    ),
    Shape(
        "an entry that is a number",
        lambda b: b["prefetch"]["conditions"]["entry"].insert(0, 5),
        "(none)/(no id) at prefetch.conditions.entry[0]",
        None,
    ),
    Shape(
        "an entry resource that is a string",
        lambda b: _entry(b, "conditions", 0).update(resource="Condition/cond-t1dm"),
        "(none)/(no id) at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "fullUrl an object with no id",
        lambda b: _entry(b, "conditions", 0).update(fullUrl={"value": "urn:uuid:1"}),
        "Condition/cond-t1dm at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "Observation code a string",
        lambda b: _resource(b, "observations", 2).update(code="4548-4"),
        "Observation/obs-hba1c at prefetch.observations.entry[2]",
        _drop("observations", 2),
    ),
    Shape(
        "coding code an object",
        lambda b: _hba1c_coding(b).update(code={"value": "4548-4"}),
        "Observation/obs-hba1c at prefetch.observations.entry[2]",
        _drop("observations", 2),
    ),
    Shape(
        "coding a number",
        lambda b: _resource(b, "observations", 2)["code"].update(coding=5),
        "Observation/obs-hba1c at prefetch.observations.entry[2]",
        _drop("observations", 2),
    ),
    Shape(
        "coding system a number",
        lambda b: _hba1c_coding(b).update(system=5),
        "Observation/obs-hba1c at prefetch.observations.entry[2]",
        _drop("observations", 2),
    ),
    Shape(
        "Condition coding system a number",
        lambda b: _resource(b, "conditions", 0)["code"]["coding"][0].update(system=10),
        "Condition/cond-t1dm at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "lone UTF-16 surrogate inside an invalid resource",
        lambda b: _resource(b, "conditions", 0).update(
            code={"text": "diabetes \ud800"}, onsetDateTime="\udfff"
        ),
        "Condition/cond-t1dm at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "lone UTF-16 surrogate in the id of an invalid resource",
        lambda b: _resource(b, "conditions", 0).update(id="cond-\ud800", code=[]),
        "Condition/(invalid id) at prefetch.conditions.entry[0]",
        _drop("conditions", 0),
    ),
    Shape(
        "Observation value a string",
        lambda b: _resource(b, "observations", 2)["valueQuantity"].update(value="8.1"),
        "Observation/obs-hba1c at prefetch.observations.entry[2]",
        _drop("observations", 2),
    ),
    Shape(
        "MedicationRequest dosageInstruction an object",
        lambda b: _resource(b, "medicationRequests", 0).update(dosageInstruction={"text": "x"}),
        "MedicationRequest/medreq-lispro-mdi at prefetch.medicationRequests.entry[0]",
        _drop("medicationRequests", 0),
    ),
    Shape(
        "MedicationRequest timing frequency a string",
        lambda b: _resource(b, "medicationRequests", 0)["dosageInstruction"][0]["timing"][
            "repeat"
        ].update(frequency="4"),
        "MedicationRequest/medreq-lispro-mdi at prefetch.medicationRequests.entry[0]",
        _drop("medicationRequests", 0),
    ),
    Shape(
        "Encounter class a list",
        lambda b: _resource(b, "encounters", 1).update(**{"class": [{"code": "AMB"}]}),
        "Encounter/enc-visit-oct at prefetch.encounters.entry[1]",
        _drop("encounters", 1),
    ),
    Shape(
        "QuestionnaireResponse answer of the wrong type",
        lambda b: _resource(b, "questionnaireResponses", 0).update(item=[{"linkId": ["a"]}]),
        "QuestionnaireResponse/qr-csii at prefetch.questionnaireResponses.entry[0]",
        _drop("questionnaireResponses", 0),
    ),
    Shape(
        "Patient birthDate a number",
        lambda b: b["prefetch"]["patient"].update(birthDate=19500101),
        "Patient/pat-csii at prefetch.patient",
        lambda b: b["prefetch"].update(patient={"resourceType": "Patient", "id": "pat-csii"}),
    ),
    Shape(
        "draft order resourceType an object",
        lambda b: b["context"]["draftOrders"]["entry"][1]["resource"].update(
            resourceType={"name": "MedicationRequest"}
        ),
        None,
        lambda b: b["context"]["draftOrders"]["entry"].pop(1),
    ),
    Shape(
        "draft order entry a number",
        lambda b: b["context"]["draftOrders"]["entry"].append(5),
        None,
        lambda b: None,
    ),
]


def _covered(answer: Body) -> dict[str, str]:
    """The coverage-information ``covered`` code per order the response updates."""
    found = {}
    for action in answer.get("systemActions", []):
        resource = action["resource"]
        for extension in resource.get("extension", []):
            if extension["url"] == EXTENSION_URL:
                parts = {p["url"]: p for p in extension["extension"]}
                found[f"{resource['resourceType']}/{resource['id']}"] = parts["covered"][
                    "valueCode"
                ]
    return found


def _check(status: int, text: str, shape: Shape) -> Body:
    assert status == 200, text[:500]
    text.encode("utf-8")
    assert "\\ud8" not in text.lower()  # no lone surrogate is echoed
    answer: Body = json.loads(text)
    validate_cds_response(answer)
    details = " ".join(card.get("detail", "") for card in answer["cards"])
    if shape.named is not None:
        assert shape.named in details
    return answer


@pytest.fixture
def post() -> Callable[[Body], tuple[int, str]]:
    """POST a body to order-sign on the app; (status, response text)."""
    client = make_app().test_client()

    def send(body: Body) -> tuple[int, str]:
        response = client.post(ORDER_SIGN, data=json.dumps(body), content_type="application/json")
        return response.status_code, response.get_data(as_text=True)

    return send


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_a_malformed_resource_is_left_out_and_named(
    shape: Shape, post: Callable[[Body], tuple[int, str]]
) -> None:
    body = _base()
    shape.mutate(body)
    answer = _check(*post(body), shape)
    if shape.same_as is not None:
        without = _base()
        shape.same_as(without)
        status, text = post(without)
        assert status == 200
        assert _covered(answer) == _covered(json.loads(text))


def test_a_malformed_bundle_counts_as_data_not_had(post: Callable[[Body], tuple[int, str]]) -> None:
    """What a Bundle with a malformed ``entry`` holds cannot be known: its facts are
    unknown, not 'not found'."""
    body = _base()
    body["prefetch"]["conditions"]["entry"] = 5
    status, text = post(body)
    answer = _check(status, text, SHAPES[2])
    assert set(_covered(answer).values()) == {"conditional"}


def test_a_lone_surrogate_in_an_invalid_pump_order_is_not_echoed(
    post: Callable[[Body], tuple[int, str]],
) -> None:
    """An invalid pump order gets a warning card naming it; its id, not an R4 id, is
    named as such, and no lone surrogate reaches the answer."""
    body = _base()
    body["context"]["draftOrders"]["entry"][0]["resource"].update(
        id="devreq-\ud800", status={"\ud800": "draft"}
    )
    status, text = post(body)
    assert status == 200, text[:500]
    text.encode("utf-8")
    assert "\\ud8" not in text.lower()
    answer = json.loads(text)
    validate_cds_response(answer)
    assert "DeviceRequest/(invalid id)" in json.dumps(answer)


def test_a_deceased_patients_record_is_not_read(
    post: Callable[[Body], tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the Patient (and the Coverage the coverage-information names) is read when
    the patient died before the order."""
    import fhir_mappings.record

    read: list[str] = []
    original = fhir_mappings.record.read_resource

    def counting(raw: Any, path: str) -> Any:
        read.append(raw["resourceType"])
        return original(raw, path)

    monkeypatch.setattr(fhir_mappings.record, "read_resource", counting)
    body = _base()
    body["prefetch"]["patient"]["deceasedDateTime"] = "2026-01-01"
    status, text = post(body)
    assert status == 200, text
    assert "deceased" in text
    assert set(read) == {"Patient", "Coverage"}


def test_only_draft_orders_are_validated_as_whole_r4_resources_and_once(
    post: Callable[[Body], tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fhir_mappings.r4

    validated: list[str] = []
    original = fhir_mappings.r4.get_fhir_model_class

    def counting(name: str) -> Any:
        validated.append(name)
        return original(name)

    monkeypatch.setattr(fhir_mappings.r4, "get_fhir_model_class", counting)
    status, text = post(_base())
    assert status == 200, text
    assert sorted(validated) == ["DeviceRequest", "MedicationRequest"]


# --- the same shapes over real HTTP -------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``infusion-pump-cds serve`` on loopback (unsigned calls accepted); its base URL."""
    database = tmp_path_factory.mktemp("malformed") / "audit.sqlite3"
    env = {"CDS_AUTH": "optional", "CDS_DATABASE_URL": f"sqlite:///{database}"}
    process = ServedProcess(env, workers=2).start()
    try:
        yield process.base
    finally:
        process.stop()


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_served_a_malformed_resource_is_left_out_and_named(served: str, shape: Shape) -> None:
    body = _base()
    shape.mutate(body)
    response = requests.post(
        f"{served}{ORDER_SIGN}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    _check(response.status_code, response.text, shape)


def test_deep_copies_keep_the_fixture_intact() -> None:
    """The shapes mutate copies: the fixture on disk decides as its name says."""
    body = _base()
    for shape in SHAPES:
        shape.mutate(copy.deepcopy(body))
    assert body == _base()
