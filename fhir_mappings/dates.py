"""FHIR date and dateTime values (parsed by R4B) as calendar dates."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def as_date(value: Any) -> date | None:
    """A FHIR date/dateTime/instant as a date; partial dates take their first day."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value)
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        pass
    try:
        if len(text) == 7:
            return date.fromisoformat(f"{text}-01")
        if len(text) == 4:
            return date.fromisoformat(f"{text}-01-01")
    except ValueError:
        return None
    return None
