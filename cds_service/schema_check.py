"""A fast yes or no for the small JSON Schemas every request is checked against.

``jsonschema`` walks a schema keyword by keyword for every document and builds an error
object for every branch it tries: for the envelope and the hook context of one request
that is about a tenth of the decision's time. Most requests are valid, so each schema
is compiled here once into plain Python checks that only say whether a document is
valid; ``cds_service.envelope`` asks ``jsonschema`` for the issues (messages and paths)
only when the answer is no.

Only the keywords these schemas use are compiled, with draft 2020-12 semantics (an
``integer`` may be written ``1.0``; ``true`` is not a number; a keyword applies only to
instances of its type). A schema with any other keyword is not compiled
(``compile_check`` returns None), and ``jsonschema`` alone decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

# Keywords that do not constrain the instance.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$comment"})


class _Unsupported(Exception):
    """A keyword (or form of one) compiled checks do not cover."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def compile_check(schema: Mapping[str, Any]) -> Check | None:
    """A function telling whether a document is valid against ``schema``, or None when
    the schema uses a keyword not covered here."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda _value: True
    if not isinstance(schema, Mapping):
        raise _Unsupported(repr(schema))
    checks: list[Check] = []
    for keyword, argument in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "additionalProperties":
            continue  # compiled with "properties" below
        checks.append(_keyword(keyword, argument, schema))
    if "additionalProperties" in schema and "properties" not in schema:
        checks.append(_properties({}, schema["additionalProperties"]))
    if not checks:
        return lambda _value: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _keyword(keyword: str, argument: Any, schema: Mapping[str, Any]) -> Check:
    if keyword == "type":
        if not isinstance(argument, str) or argument not in _TYPES:
            raise _Unsupported(keyword)
        return _TYPES[argument]
    if keyword == "required":
        names = tuple(argument)
        return lambda v: not isinstance(v, dict) or all(name in v for name in names)
    if keyword == "properties":
        return _properties(argument, schema.get("additionalProperties", True))
    if keyword == "dependentRequired":
        needs = {name: tuple(others) for name, others in argument.items()}
        return lambda v: (
            not isinstance(v, dict)
            or all(
                all(other in v for other in others) for name, others in needs.items() if name in v
            )
        )
    if keyword in ("minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum"):
        return _bound(keyword, argument)
    if keyword == "pattern":
        pattern = re.compile(argument)
        return lambda v: not isinstance(v, str) or pattern.search(v) is not None
    if keyword == "const":
        if not isinstance(argument, str):
            raise _Unsupported(keyword)  # JSON equality of other values is not plain ==
        return lambda v: isinstance(v, str) and v == argument
    if keyword == "items":
        item = _compile(argument)
        return lambda v: not isinstance(v, list) or all(item(element) for element in v)
    if keyword == "anyOf":
        branches = tuple(_compile(branch) for branch in argument)
        return lambda v: any(branch(v) for branch in branches)
    if keyword == "oneOf":
        branches = tuple(_compile(branch) for branch in argument)
        return lambda v: sum(1 for branch in branches if branch(v)) == 1
    raise _Unsupported(keyword)


def _bound(keyword: str, limit: Any) -> Check:
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise _Unsupported(keyword)
    if keyword == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= limit
    if keyword == "maxLength":
        return lambda v: not isinstance(v, str) or len(v) <= limit
    if keyword == "minItems":
        return lambda v: not isinstance(v, list) or len(v) >= limit
    if keyword == "maxItems":
        return lambda v: not isinstance(v, list) or len(v) <= limit
    if keyword == "minimum":
        return lambda v: not _is_number(v) or v >= limit
    return lambda v: not _is_number(v) or v <= limit


def _properties(properties: Mapping[str, Any], additional: Any) -> Check:
    named = {name: _compile(sub) for name, sub in properties.items()}
    other = None if additional is True else _compile(additional)

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for name, element in value.items():
            sub = named.get(name, other)
            if sub is not None and not sub(element):
                return False
        return True

    return check
