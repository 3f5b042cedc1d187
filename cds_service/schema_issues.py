"""A JSON Schema's verdict on a request body as OperationOutcome issues: each names the
offending member by its path in the body (``context.draftOrders.entry[0]``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.errors import Issue
from cds_service.schema_check import Check, compile_check

WHOLE_BODY = "(request body)"


def json_path(parts: Iterable[Any]) -> str:
    """``("context", "draftOrders", "entry", 0)`` -> ``context.draftOrders.entry[0]``."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# The compiled yes/no check of each validator's schema, by the validator's identity (it
# is kept alongside, so an id is never taken for another validator's).
_CHECKS: dict[int, tuple[Draft202012Validator, Check | None]] = {}


def _quick_check(validator: Draft202012Validator) -> Check | None:
    known = _CHECKS.get(id(validator))
    if known is None or known[0] is not validator:
        known = (validator, compile_check(validator.schema))
        _CHECKS[id(validator)] = known
    return known[1]


def schema_issues(
    validator: Draft202012Validator,
    document: Any,
    prefix: str = "",
    describe: Callable[[ValidationError, str], str] | None = None,
) -> list[Issue]:
    """Every schema violation as an issue whose expression points at the offending member
    (under ``prefix``), in path order; ``describe(error, where)`` words the message when
    the schema's own would not do. ``jsonschema`` is asked only when the schema compiled
    into a plain check (``schema_check``) finds the document invalid."""
    check = _quick_check(validator)
    if check is not None and check(document):
        return []
    issues = []
    errors: list[ValidationError] = sorted(
        validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
    )
    for error in errors:
        location = json_path(error.absolute_path)
        where = ".".join(filter(None, [prefix, location])) or prefix or WHOLE_BODY
        message = describe(error, where) if describe else error.message
        issues.append(Issue(f"{where}: {message}", where))
    return issues
