"""The compiled yes/no schema checks say what ``jsonschema`` says, on real request bodies
and on thousands of misshapen variants of them."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cds_service.envelope import _envelope_validator
from cds_service.schema_check import compile_check
from hooks import SERVICES, context_validator
from tests.conftest import FIXTURES

REQUESTS = sorted((FIXTURES / "requests").glob("*.json"))
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    1.5,
    -1,
    "",
    "x",
    "Bundle",
    "Bearer",
    "https://ehr.example.org/fhir",
    "not a url",
    "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "urn:uuid:d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "ServiceRequest/x",
    [],
    [1],
    ["ServiceRequest/x"],
    {},
    {"resourceType": "Bundle"},
    {"resourceType": 1},
]


def _validators() -> list[tuple[str, Draft202012Validator]]:
    return [("envelope", _envelope_validator())] + [
        (service.id, context_validator(service)) for service in SERVICES.values()
    ]


def _locations(value: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every member, a few levels deep."""
    if depth > 4:
        return
    if isinstance(value, dict):
        for key in value:
            yield value, key
            yield from _locations(value[key], depth + 1)
    elif isinstance(value, list):
        for index in range(min(len(value), 3)):
            yield value, index
            yield from _locations(value[index], depth + 1)


def _mutants(body: dict[str, Any], count: int, rng: random.Random) -> Iterator[Any]:
    for _ in range(count):
        mutant = copy.deepcopy(body)
        for _ in range(rng.randint(1, 3)):
            places = list(_locations(mutant))
            if not places:
                break
            container, key = rng.choice(places)
            action = rng.random()
            if action < 0.2 and isinstance(container, dict):
                del container[key]
            elif action < 0.3 and isinstance(container, dict):
                container[rng.choice(["fhirServer", "fhirAuthorization", "extra", "prefetch"])] = (
                    rng.choice(ODD_VALUES)
                )
            else:
                container[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        yield mutant


def test_every_schema_a_request_meets_is_compiled() -> None:
    """Not a vacuous comparison: every validator of a request has a compiled check."""
    for name, validator in _validators():
        assert compile_check(validator.schema) is not None, name


@pytest.mark.parametrize("request_file", REQUESTS, ids=lambda p: p.stem)
def test_compiled_checks_agree_with_jsonschema(request_file: Any) -> None:
    body = json.loads(request_file.read_text())
    rng = random.Random(request_file.stem)
    documents = [body, *_mutants(body, 60, rng)]
    verdicts = set()
    for name, validator in _validators():
        check = compile_check(validator.schema)
        assert check is not None
        for document in documents:
            target = document if name == "envelope" else _context_of(document)
            expected = validator.is_valid(target)
            assert check(target) is expected, (name, json.dumps(target)[:500])
            verdicts.add(expected)
    assert verdicts == {True, False}


def _context_of(document: Any) -> Any:
    return document.get("context") if isinstance(document, dict) else document


@pytest.mark.parametrize(
    ("schema", "document", "valid"),
    [
        ({"type": "integer"}, 1.0, True),  # draft 2020-12: a zero fractional part
        ({"type": "integer"}, True, False),
        ({"type": "number"}, False, False),
        ({"minimum": 0}, "not a number", True),  # keywords apply to their own type only
        ({"maxItems": 1}, {"a": 1, "b": 2}, True),
        ({"pattern": "^a"}, "ba", False),
        ({"pattern": "a"}, "ba", True),  # search, not match
        ({"const": "Bundle"}, "Bundle", True),
        ({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"a": 1, "b": 2}, False),
        ({"dependentRequired": {"a": ["b"]}}, {"a": 1}, False),
        ({"additionalProperties": {"type": "null"}}, {"x": None}, True),
    ],
)
def test_draft_2020_12_semantics(schema: dict[str, Any], document: Any, valid: bool) -> None:
    check = compile_check(schema)
    assert check is not None
    assert check(document) is valid
    assert Draft202012Validator(schema).is_valid(document) is valid


@pytest.mark.parametrize(
    "schema",
    [
        {"type": ["string", "null"]},
        {"const": 1},
        {"additionalProperties": False},
        {"patternProperties": {"^a": {"type": "string"}}},
        {"$ref": "#/$defs/x", "$defs": {"x": {}}},
        {"properties": {"a": {"format": "uri"}}},
    ],
)
def test_other_keywords_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_check(schema) is None
