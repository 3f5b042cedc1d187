"""The running service: Flask app factory, routes, configuration, the feedback/audit
store and the command line."""

from cds_service.app import create_app

__all__ = ["create_app"]
