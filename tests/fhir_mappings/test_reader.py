"""The shape-validated reader: the elements the facts read, each checked against its R4
JSON type; a resource with one wrong is refused with where it is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings.r4 import InvalidResource
from fhir_mappings.reader import READ_TYPES, SHAPES, Element, read_resource


def _observation(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "a1c",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "A1c"}]},
        "effectiveDateTime": "2026-01-05T10:00:00Z",
        "issued": "2026-01-05T12:00:00.000+01:00",
        "valueQuantity": {"value": 8.1, "unit": "%", "code": "%"},
        "referenceRange": [{"low": {"value": 4, "unit": "%"}}],
    }
    resource.update(changes)
    return resource


def _refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(InvalidResource) as refused:
        read_resource(raw, "prefetch.observations.entry[0]")
    problem = refused.value.problem
    assert problem.path == "prefetch.observations.entry[0]"
    return problem.message


def test_a_well_formed_resource_reads_as_attributes() -> None:
    obs = read_resource(_observation(), "p")
    assert isinstance(obs, Element)
    assert obs.status == "final"
    assert obs.code.coding[0].code == "4548-4"
    assert obs.valueQuantity.value == 8.1
    assert obs.referenceRange[0].low.value == 4
    assert obs.effectivePeriod is None  # in the shape, absent
    with pytest.raises(AttributeError):
        _ = obs.subject  # not read by any fact, so not in the shape


def test_class_reads_as_class_fhir_like_the_r4b_models() -> None:
    encounter = read_resource(
        {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}, "p"
    )
    assert encounter.class_fhir.code == "AMB"


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"code": "4548-4"}, "code: expected an object"),
        ({"code": {"coding": 5}}, "code.coding: expected a list"),
        ({"code": {"coding": {"code": "4548-4"}}}, "code.coding: expected a list"),
        ({"code": {"coding": [5]}}, "code.coding[0]: expected an object"),
        ({"code": {"coding": [{"code": {"value": "4548-4"}}]}}, "code.coding[0].code"),
        ({"code": {"coding": [{"system": 5, "code": "4548-4"}]}}, "code.coding[0].system"),
        ({"code": {"coding": [{"code": " 4548-4"}]}}, "code.coding[0].code: expected a code"),
        ({"code": {"text": ""}}, "code.text: expected a string"),
        ({"code": {"text": "A1c \ud800"}}, "code.text: expected a string"),
        ({"status": ["final"]}, "status: expected a code"),
        ({"valueQuantity": {"value": "8.1"}}, "valueQuantity.value: expected a number"),
        ({"valueQuantity": {"value": True}}, "valueQuantity.value: expected a number"),
        ({"valueQuantity": [{"value": 8.1}]}, "valueQuantity: expected an object"),
        ({"referenceRange": {"low": {"value": 4}}}, "referenceRange: expected a list"),
        ({"effectiveDateTime": "last spring"}, "effectiveDateTime: expected a dateTime"),
        ({"effectiveDateTime": "2026-02-30"}, "effectiveDateTime: expected a dateTime"),
        ({"effectiveDateTime": "2026-01-05T10:00:00"}, "effectiveDateTime: expected a dateTime"),
        ({"effectiveDateTime": 20260105}, "effectiveDateTime: expected a dateTime"),
        ({"issued": "2026-01-05"}, "issued: expected an instant"),
    ],
)
def test_a_malformed_read_element_refuses_the_resource_naming_it(
    changes: dict[str, Any], where: str
) -> None:
    assert _refusal(_observation(**changes)).startswith(where)


@pytest.mark.parametrize(
    "when", ["2026", "2026-01", "2026-01-05", "2026-01-05T10:00:00Z", "2026-01-05T10:00:00.5-05:00"]
)
def test_partial_and_zoned_datetimes_are_well_formed(when: str) -> None:
    assert read_resource(_observation(effectiveDateTime=when), "p").effectiveDateTime == when


def test_elements_nothing_reads_are_not_looked_at() -> None:
    """Unknown elements and malformed elements no fact reads leave the resource in."""
    raw = _observation(subject=5, note="free text", bogus={"\ud800": 1})
    assert read_resource(raw, "p").code.coding[0].code == "4548-4"


def test_a_null_element_is_absent() -> None:
    assert read_resource(_observation(valueQuantity=None), "p").valueQuantity is None


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        ({"resourceType": "Patient", "birthDate": 1950}, "birthDate: expected a date"),
        ({"resourceType": "Patient", "deceasedBoolean": "true"}, "deceasedBoolean"),
        ({"resourceType": "Coverage", "class": {"value": "Part A"}}, "class: expected a list"),
        ({"resourceType": "Condition", "onsetPeriod": {"start": 5}}, "onsetPeriod.start"),
        (
            {"resourceType": "MedicationRequest", "dosageInstruction": {"text": "by pump"}},
            "dosageInstruction: expected a list",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "dosageInstruction": [{"timing": {"repeat": {"frequency": 2.5}}}],
            },
            "dosageInstruction[0].timing.repeat.frequency: expected a positive integer",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "dispenseRequest": {"numberOfRepeatsAllowed": -1},
            },
            "dispenseRequest.numberOfRepeatsAllowed",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "contained": [{"resourceType": "Medication", "id": "m", "code": "insulin"}],
            },
            "contained[0].code: expected an object",
        ),
        (
            {"resourceType": "MedicationRequest", "contained": [{"resourceType": ["Medication"]}]},
            "contained[0].resourceType",
        ),
        ({"resourceType": "AllergyIntolerance", "reaction": [{"substance": []}]}, "reaction[0]"),
        ({"resourceType": "Device", "deviceName": "pump"}, "deviceName: expected a list"),
        ({"resourceType": "Encounter", "class": [{"code": "AMB"}]}, "class: expected an object"),
        ({"resourceType": "Encounter", "participant": [{"individual": "Practitioner/1"}]}, "par"),
        ({"resourceType": "Location", "type": {"text": "SNF"}}, "type: expected a list"),
        (
            {
                "resourceType": "QuestionnaireResponse",
                "item": [{"linkId": "a", "answer": [{"valueBoolean": "yes"}]}],
            },
            "item[0].answer[0].valueBoolean: expected true or false",
        ),
        ({"resourceType": "QuestionnaireResponse", "questionnaire": 7}, "questionnaire"),
        ({"resourceType": "Medication", "code": {"coding": [{"display": 5}]}}, "code.coding[0]"),
    ],
)
def test_every_read_type_is_checked_for_shape(resource: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidResource) as refused:
        read_resource(resource, "x")
    assert refused.value.problem.message.startswith(where)
    assert refused.value.problem.resource_type == resource["resourceType"]


def test_a_contained_resource_of_another_type_is_read_for_its_id_only() -> None:
    order = read_resource(
        {
            "resourceType": "MedicationRequest",
            "contained": [{"resourceType": "Questionnaire", "id": "q", "code": [{"code": "x"}]}],
        },
        "x",
    )
    assert order.contained[0].id == "q"
    assert order.contained[0].resourceType == "Questionnaire"


@pytest.mark.parametrize(
    ("resource_id", "shown"), [(None, "(no id)"), (5, "(invalid id)"), ("a\ud800", "(invalid id)")]
)
def test_a_problem_names_an_id_only_when_it_is_one(resource_id: Any, shown: str) -> None:
    raw: dict[str, Any] = {"resourceType": "Patient", "birthDate": "someday"}
    if resource_id is not None:
        raw["id"] = resource_id
    with pytest.raises(InvalidResource) as refused:
        read_resource(raw, "prefetch.patient")
    assert refused.value.problem.resource_id == shown
    refused.value.problem.message.encode("utf-8")  # printable: no lone surrogate


@pytest.mark.parametrize("depth", [70, 5000])
def test_nesting_deeper_than_any_real_resource_is_a_problem_not_a_crash(depth: int) -> None:
    item: dict[str, Any] = {"linkId": "a"}
    for _ in range(depth):
        item = {"linkId": "a", "item": [item]}
    with pytest.raises(InvalidResource) as refused:
        read_resource({"resourceType": "QuestionnaireResponse", "item": [item]}, "x")
    assert refused.value.problem.message == "nested too deeply"


def test_nesting_as_deep_as_real_questionnaires_go_reads() -> None:
    item: dict[str, Any] = {"linkId": "a"}
    for _ in range(20):
        item = {"linkId": "a", "item": [item]}
    read = read_resource({"resourceType": "QuestionnaireResponse", "item": [item]}, "x")
    assert read.item[0].item[0].linkId == "a"


def test_every_shape_names_only_types_it_defines() -> None:
    """Each element type is a primitive, another shape, or a contained resource."""
    from fhir_mappings.reader import PRIMITIVES

    for shape in SHAPES.values():
        for kind in shape.values():
            name = kind.removesuffix("[]")
            assert name in PRIMITIVES or name in SHAPES or name == "Resource", kind
    assert set(SHAPES) >= READ_TYPES


def test_of_several_malformed_elements_the_first_in_shape_order_is_named() -> None:
    """The reader looks at the members a resource has, in the order it has them; the
    element named is still the first wrong one in the shape's order, whatever the order
    of the JSON members (so the same resource is always named the same way)."""
    wrong = {"valueQuantity": {"value": "8.1"}, "code": {"coding": [{"system": 5}]}}
    reversed_members = dict(reversed(list(_observation(**wrong).items())))
    names = {_refusal(_observation(**wrong)), _refusal(reversed_members)}
    assert len(names) == 1
    (name,) = names
    assert name.startswith(("code.coding[0].system", "valueQuantity.value"))
    shape = list(SHAPES["Observation"])
    first = min(("code", "valueQuantity"), key=shape.index)
    assert name.startswith(first)
