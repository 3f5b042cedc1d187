"""The Flask application factory."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from cds_service import decision_page, dtr_routes, fhir_routes, smart_app
from cds_service.auth import install_client_authentication
from cds_service.backend_auth import install_backend_auth
from cds_service.cors import install_cors
from cds_service.decision_page import new_decision_page_token
from cds_service.envelope import preload_validators
from cds_service.operations import install_operations
from cds_service.rate_limit import install_rate_limits
from cds_service.replay import ReplayCache
from cds_service.routes import blueprint
from cds_service.settings import Settings
from cds_service.smart_sessions import install_session_sweep
from cds_service.store import open_store
from cds_service.warm_up import warm_up_master, warm_up_worker
from coverage_policy.loader import load_policy
from fhir_mappings.episodes import preload as preload_mappings
from hooks.questionnaire import documentation_questionnaire

logger = logging.getLogger(__name__)

__all__ = ["create_app", "preload", "warm_up_master", "warm_up_worker"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_uuid() -> str:
    return str(uuid.uuid4())


def preload() -> None:
    """Load now what answering loads on first use (the FHIR R4B models of the order types
    and every element type they hold, schema validators, code bindings): a server calls
    this before it forks, so no worker's first call pays for it (about 0.25 s)."""
    preload_mappings()
    preload_validators()


def create_app(
    config: Mapping[str, Any] | Settings | None = None,
    *,
    clock: Callable[[], datetime] = _utc_now,
    new_uuid: Callable[[], str] = _new_uuid,
    new_page_token: Callable[[], str] = new_decision_page_token,
) -> Flask:
    """Build the service. ``config`` overrides the ``CDS_*`` environment (or is the
    ``Settings`` already read from it); ``clock``, ``new_uuid`` and ``new_page_token`` are
    injectable so tests can compare responses exactly."""
    app = Flask(__name__, instance_relative_config=True)
    # Checked and frozen once: every module reads these attributes.
    settings = config if isinstance(config, Settings) else Settings.load(config)
    app.config["CDS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["cds_clock"] = clock
    app.extensions["cds_new_uuid"] = new_uuid
    app.extensions["cds_new_page_token"] = new_page_token
    # A policy that fails its schema or semantic checks stops the service here.
    app.extensions["cds_policy"] = load_policy()
    app.extensions["cds_questionnaire"] = documentation_questionnaire(
        app.extensions["cds_policy"], publisher=settings.payer_name
    )
    # The feedback/audit database, its schema brought up to date (several processes may
    # start at once); the JWT replay cache lives in it too.
    store = open_store(settings.database_url, app.instance_path, settings.audit_sync)
    store.migrate_at_startup()
    app.extensions["cds_store"] = store
    app.extensions["cds_replay_cache"] = ReplayCache(store)  # JWT exp is wall-clock time
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    app.register_blueprint(blueprint)
    app.register_blueprint(fhir_routes.blueprint)
    app.register_blueprint(dtr_routes.blueprint)
    app.register_blueprint(decision_page.blueprint)
    app.register_blueprint(smart_app.blueprint)
    install_client_authentication(app)
    install_cors(app)
    install_operations(app)
    install_rate_limits(app)
    # After the operations: the retention sweep also drops expired DTR client tokens.
    install_backend_auth(app)
    install_session_sweep(app)  # the documentation app's expired sessions too
    if not settings.auth_required:
        logger.warning("CDS_AUTH=optional: unsigned service calls are accepted")
    return app
