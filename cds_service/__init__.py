"""The running service: Flask app factory, routes, configuration and command line."""

from cds_service.app import create_app

__all__ = ["create_app"]
