"""CORS for browser-based CDS clients (e.g. the CDS Hooks sandbox).

Only the origins in ``CDS_CORS_ORIGINS`` get CORS headers, each echoed back exactly
(never ``*``, and no ``Access-Control-Allow-Credentials``: clients authenticate with a
bearer JWT, not cookies). Preflight ``OPTIONS`` requests are answered by Flask's automatic
OPTIONS handling before any authentication; ``Vary: Origin`` is on every answer so caches
never hand one origin's answer to another.
"""

from __future__ import annotations

from flask import Flask, Response, request

from cds_service.settings import app_settings

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = "600"


def _normalized(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def install_cors(app: Flask) -> None:
    """Add the CORS headers for the configured origins to every answer of ``app``."""
    allowed = frozenset(_normalized(o) for o in app_settings(app).cors_origins)

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if not origin or _normalized(origin) not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE_S
        return response
