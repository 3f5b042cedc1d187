"""The HTML page an error on a page meant for people (the documentation app, decision
pages) is answered with; every other error is an OperationOutcome. Shared by the routes
and by the HTTP server's own error answers (``cds_service.serving``)."""

from __future__ import annotations

import html

# Paths of the pages meant for people.
PEOPLE_PAGE_PREFIXES = ("/dtr/", "/decisions/")

_ERROR_PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>{reason}</title></head>"
    "<body><h1>{reason}</h1><p>{diagnostics}</p></body></html>"
)


def is_people_page(path: str | None) -> bool:
    return bool(path) and any(str(path).startswith(p) for p in PEOPLE_PAGE_PREFIXES)


def error_page(reason: str, diagnostics: str) -> str:
    """The HTML page an error on a page meant for people is answered with."""
    return _ERROR_PAGE.format(reason=html.escape(reason), diagnostics=html.escape(diagnostics))
