"""The running service: Flask app factory, routes, configuration, the feedback/audit
store and the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds_service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `serve` must patch sockets (gevent) before the app's modules load.
    if name == "create_app":
        from cds_service.app import create_app

        return create_app
    raise AttributeError(name)
