"""The record: relevant resources parsed, invalid ones named, every reference form resolves."""

from __future__ import annotations

from typing import Any

from fhir_mappings.record import build_record
from tests.builders import observation, record_of


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


def _bundle(*entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}


def test_malformed_bundles_and_entries_are_left_out_and_named() -> None:
    condition = {"resourceType": "Condition", "id": "c1", "code": {"text": "diabetes"}}
    record = build_record(
        {
            "conditions": _bundle(
                5,
                {"resource": 5},
                {"resource": {"resourceType": ["Condition"], "id": "c2"}},
                {"resource": {"resourceType": {"name": "Condition"}}},
                {"fullUrl": {"id": "c3"}, "resource": {**condition, "id": "c3"}},
                {"fullUrl": "urn:uuid:0b1d", "resource": condition},
                {"search": {"mode": "include"}},  # no resource: nothing to leave out
            ),
            "observations": {"resourceType": "Bundle", "id": "b1", "entry": 7},
        }
    )
    assert [e.reference for e in record.of_type("Condition")] == ["Condition/c1"]
    named = [(p.resource_type, p.resource_id, p.path, p.message) for p in record.problems]
    assert named == [
        ("(none)", "(no id)", "prefetch.conditions.entry[0]", "not a Bundle entry (an object)"),
        ("(none)", "(no id)", "prefetch.conditions.entry[1]", "resource: expected an object"),
        ("(none)", "c2", "prefetch.conditions.entry[2]", "resourceType: expected a string"),
        ("(none)", "(no id)", "prefetch.conditions.entry[3]", "resourceType: expected a string"),
        ("Condition", "c3", "prefetch.conditions.entry[4]", "fullUrl: expected a uri"),
        ("Bundle", "b1", "prefetch.observations", "entry: expected a list"),
    ]
    # What a malformed Bundle holds cannot be known: its key counts as unavailable.
    assert not record.has_data("observations")
    assert record.has_data("conditions")


def test_each_type_is_read_when_a_fact_first_asks_for_it() -> None:
    """A deceased patient's record is not read beyond the Patient; problems name the
    malformed resources of the types read so far, in prefetch order."""
    record = record_of(
        {"resourceType": "Condition", "id": "bad-1", "onsetDateTime": "soon"},
        {"resourceType": "Patient", "id": "p", "deceasedDateTime": "2020-01-01"},
        {"resourceType": "Observation", "id": "bad-2", "status": 5, "code": {"text": 5}},
        {"resourceType": "Encounter", "id": "bad-3", "class": "AMB"},
    )
    (patient,) = record.of_type("Patient")
    assert patient.resource.deceasedDateTime == "2020-01-01"
    assert record.problems == []
    record.of_type("Encounter")
    record.of_type("Condition")
    assert [p.resource_id for p in record.problems] == ["bad-1", "bad-3"]


def test_resolving_a_reference_reads_only_its_type() -> None:
    record = record_of(
        {"resourceType": "Medication", "id": "m1", "code": {"text": "insulin lispro"}},
        {"resourceType": "Condition", "id": "bad", "code": "E10"},
    )
    found = record.resolve("Medication/m1")
    assert found is not None
    assert found.resource.code.text == "insulin lispro"
    assert record.problems == []
    assert record.resolve({"reference": "Medication/m1"}) is None  # type: ignore[arg-type]


def test_types_no_fact_reads_are_not_read_at_all() -> None:
    """Non-draft DeviceRequests, Claims: kept out, and never named as problems."""
    record = record_of(
        {"resourceType": "Claim", "id": "claim", "status": ["active"]},
        {"resourceType": "DeviceRequest", "id": "dr", "status": 5},
    )
    assert record.of_type("Claim") == []
    assert record.of_type("DeviceRequest") == []
    assert record.problems == []
