"""The record: relevant resources parsed, invalid ones named, every reference form resolves."""

from __future__ import annotations

from fhir_mappings.record import build_record
from tests.fhir_mappings.helpers import observation, record_of


def test_references_resolve_in_all_three_forms() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": "urn:uuid:7f1a2b3c-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Encounter",
                    "id": "enc-1",
                    "status": "finished",
                    "class": {"code": "AMB"},
                },
            },
            {
                "fullUrl": "urn:uuid:7f1a2b3c-0000-4000-8000-000000000002",
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "IMP"},
                },
            },
        ],
    }
    record = build_record({"encounters": bundle})
    assert record.resolve("Encounter/enc-1") is not None
    assert record.resolve("https://ehr.example.org/fhir/Encounter/enc-1") is not None
    assert record.resolve("https://ehr.example.org/fhir/Encounter/enc-1/_history/3") is not None
    assert (
        record.resolve("urn:uuid:7f1a2b3c-0000-4000-8000-000000000001").reference
        == "Encounter/enc-1"
    )
    no_id = record.resolve("urn:uuid:7f1a2b3c-0000-4000-8000-000000000002")
    assert no_id is not None
    assert no_id.resource.class_fhir.code == "IMP"
    assert record.resolve("Encounter/missing") is None
    assert record.resolve(None) is None


def test_only_relevant_types_and_observation_codes_are_parsed() -> None:
    record = record_of(
        observation("a1c", "4548-4", 8.1, "%", "2026-01-01"),
        observation("heart-rate", "8867-4", 70, "/min", "2026-01-01"),
        {"resourceType": "Claim", "id": "claim-1"},
    )
    assert [e.reference for e in record.of_type("Observation")] == ["Observation/a1c"]
    assert record.of_type("Claim") == []


def test_invalid_resource_is_left_out_and_named_with_type_id_and_path() -> None:
    record = record_of(
        {"resourceType": "Condition", "id": "ok", "subject": {"reference": "Patient/p"}},
        {
            "resourceType": "Condition",
            "id": "bad",
            "subject": {"reference": "Patient/p"},
            "onsetDateTime": "last spring",
        },
    )
    assert [e.reference for e in record.of_type("Condition")] == ["Condition/ok"]
    (problem,) = record.problems
    assert (problem.resource_type, problem.resource_id, problem.path) == (
        "Condition",
        "bad",
        "prefetch.data.entry[1]",
    )
    assert "onsetDateTime" in problem.message


def test_same_resource_from_two_keys_is_kept_once() -> None:
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}}
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition}]}
    record = build_record({"a": bundle, "b": bundle})
    assert len(record.of_type("Condition")) == 1


def test_unavailable_keys_are_remembered() -> None:
    record = build_record({}, {"conditions": "timed out"})
    assert not record.has_data("conditions")
    assert record.has_data("observations")
