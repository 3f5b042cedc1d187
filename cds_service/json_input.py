"""Decoding JSON that comes from outside: request bodies, FHIR server answers, JWK Sets.

``json.loads`` alone lets through what is not JSON (``NaN``, ``Infinity``) and raises
more than ``JSONDecodeError`` (a ``ValueError`` for an integer literal past Python's
4,300-digit limit, ``RecursionError`` for deep nesting). Every reader of untrusted
bytes decodes here, so each of those is one ``UnreadableJson`` with a reason fit to
show a client (never Python's own message, which names interpreter settings).
"""

from __future__ import annotations

import json
from typing import Any

NESTED_TOO_DEEPLY = "JSON nested too deeply"


class UnreadableJson(ValueError):
    """The bytes are not a JSON text the service accepts; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise UnreadableJson(f"not valid JSON: {name} is not a JSON number")


def loads_untrusted(data: bytes | str) -> Any:
    """The value of a JSON text, or ``UnreadableJson`` saying why it is not one."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except UnreadableJson:
        raise
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise UnreadableJson("not valid JSON: the bytes are not UTF-8, UTF-16 or UTF-32") from None
    except ValueError:
        # The only other ValueError json raises: an integer literal over the digit limit.
        raise UnreadableJson("not valid JSON: a number has more digits than accepted") from None
    except RecursionError:
        raise UnreadableJson(NESTED_TOO_DEEPLY) from None
