"""JWT replay protection shared by every worker process and replica (CDS Hooks: ``jti``).

The client authentication code asks ``remember(jti, iss, expires_at)`` once per verified
JWT and refuses the call when it answers False. The ids live in the ``jwt_replay`` table
until their token expires, so a replay is caught whichever worker or host receives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import SQLAlchemyError

from cds_service.errors import ServiceUnavailable
from cds_service.store import Store
from cds_service.tables import jwt_replay

logger = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# On PostgreSQL one statement, of fixed text: expired ids purged, this one remembered. An
# id whose row has expired counts as new (its row is renewed), as if purged first; the
# purge leaves that row to the upsert, since one statement may not change a row twice.
_REMEMBER_ON_POSTGRESQL = (
    "WITH purged AS (DELETE FROM jwt_replay WHERE expires_at <= %(now)s"
    " AND NOT (iss = %(iss)s AND jti = %(jti)s))"
    " INSERT INTO jwt_replay (iss, jti, expires_at) VALUES (%(iss)s, %(jti)s, %(expires_at)s)"
    " ON CONFLICT (iss, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at"
    " WHERE jwt_replay.expires_at <= %(now)s"
    " RETURNING jti"
)


class ReplayCache:
    """The ``jti`` values seen per issuer, kept until the token they came in expires.

    ``clock`` is wall-clock time by default, the time base of the JWT ``exp`` it stores."""

    def __init__(self, store: Store, clock: Callable[[], datetime] = _utc_now) -> None:
        self.store = store
        self.clock = clock

    def remember(self, jti: str, iss: str, expires_at: float) -> bool:
        """True if ``(iss, jti)`` is new (and is now remembered until ``expires_at``, the
        token's ``exp`` in epoch seconds), False if it was seen before and has not expired.
        Expired ids are purged.

        Raises ``ServiceUnavailable`` (503) when the database cannot be used: a replay
        cannot be told from a new token then, so the call is refused, never let through.
        """
        try:
            return self._remember(jti, iss, datetime.fromtimestamp(expires_at, UTC))
        except SQLAlchemyError as exc:
            logger.error("JWT replay cache unavailable (%s): call refused", type(exc).__name__)
            raise ServiceUnavailable.single(
                "Client authentication cannot be checked right now; try again later"
            ) from exc

    def _remember(self, jti: str, iss: str, expires_at: datetime) -> bool:
        now = self.clock()
        with self.store.transaction() as connection:
            if self.store.backend == "postgresql":
                values = {"iss": iss, "jti": jti, "expires_at": expires_at, "now": now}
                remembered = connection.exec_driver_sql(_REMEMBER_ON_POSTGRESQL, values)
                return remembered.first() is not None
            connection.execute(sa.delete(jwt_replay).where(jwt_replay.c.expires_at <= now))
            inserted = connection.execute(
                sqlite.insert(jwt_replay)
                .values(iss=iss, jti=jti, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=[jwt_replay.c.iss, jwt_replay.c.jti])
                .returning(jwt_replay.c.jti)
            )
            return inserted.first() is not None
