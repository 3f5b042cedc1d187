"""A JSON Schema's verdict on a request body as OperationOutcome issues: each names the
offending member by its path in the body (``context.draftOrders.entry[0]``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.errors import Issue

WHOLE_BODY = "(request body)"


def json_path(parts: Iterable[Any]) -> str:
    """``("context", "draftOrders", "entry", 0)`` -> ``context.draftOrders.entry[0]``."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def schema_issues(
    validator: Draft202012Validator,
    document: Any,
    prefix: str = "",
    describe: Callable[[ValidationError, str], str] | None = None,
) -> list[Issue]:
    """Every schema violation as an issue whose expression points at the offending member
    (under ``prefix``), in path order; ``describe(error, where)`` words the message when
    the schema's own would not do."""
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
