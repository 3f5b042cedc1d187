"""Client authentication (CDS Hooks "Trusting CDS Clients")."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import request

from cds_service.errors import Unauthorized

logger = logging.getLogger(__name__)


def authenticate_client(settings: Mapping[str, Any], *, endpoint_url: str) -> str | None:
    """Return the calling client's ``iss``, or None for an accepted unsigned call.

    With ``CDS_AUTH=required`` a call without a verifiable bearer JWT is refused.
    """
    header = request.headers.get("Authorization", "")
    if settings["AUTH"] == "optional" and not header:
        return None
    raise Unauthorized.single("Client authentication failed")
