"""The documentation app's server-side sessions, in the shared database.

The browser holds only an unguessable session id (its cookie); the database row, keyed
by the id's SHA-256, holds the rest: while the user signs in, the ``state``, the PKCE
verifier and the ``nonce``; after the callback, the access token, its launch context and
the form's progress. Every replica reads the same rows, so any of them can answer the
next page. A session ends at its expiry (the token's, at most ``SESSION_TTL_S``); expired
rows (they hold the user's EHR access token) are removed whenever a new session starts
and by the audit retention sweep (``install_session_sweep``).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from cds_service.store import Store
from cds_service.tables import smart_app_session

# How long a sign-in may take (launch → callback), and a session may last at most.
AUTHORIZING_TTL_S = 600
SESSION_TTL_S = 8 * 3600


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class AppSession:
    """One browser's session: its id (the cookie value) and what the server keeps."""

    id: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    expires_at: datetime


def purge_expired_sessions(store: Store, now: datetime) -> int:
    """Remove the sessions that expired before ``now``; how many were removed."""
    with store.transaction() as connection:
        deleted = connection.execute(
            smart_app_session.delete().where(smart_app_session.c.expires_at < now)
        )
        return int(deleted.rowcount)


def install_session_sweep(app: Flask) -> None:
    """Add the removal of expired sessions to ``app``'s retention sweeper (if it has one)."""
    sweeper = app.extensions.get("cds_retention")
    if sweeper is not None:
        sweeper.expiring.append(
            functools.partial(purge_expired_sessions, app.extensions["cds_store"])
        )


def new_session(store: Store, data: dict[str, Any], now: datetime) -> AppSession:
    """A new session for a sign-in in progress; expired sessions are removed."""
    session = AppSession(
        secrets.token_urlsafe(32), data, now + timedelta(seconds=AUTHORIZING_TTL_S)
    )
    purge_expired_sessions(store, now)
    with store.transaction() as connection:
        connection.execute(
            smart_app_session.insert().values(
                id=_key(session.id), created_at=now, expires_at=session.expires_at, data=data
            )
        )
    return session


def load_session(store: Store, session_id: str | None, now: datetime) -> AppSession | None:
    """The session a cookie names, unless there is none or it expired."""
    if not session_id or len(session_id) > 100:
        return None
    with store.reading() as connection:
        row = (
            connection.execute(
                sa.select(smart_app_session).where(
                    smart_app_session.c.id == _key(session_id),
                    smart_app_session.c.expires_at >= now,
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    return AppSession(session_id, dict(row["data"]), row["expires_at"])


def save_session(store: Store, session: AppSession) -> None:
    with store.transaction() as connection:
        connection.execute(
            smart_app_session.update()
            .where(smart_app_session.c.id == _key(session.id))
            .values(data=session.data, expires_at=session.expires_at)
        )


def take_authorization(store: Store, session: AppSession) -> bool:
    """Mark the session's sign-in as used, once: False when another request already did
    (a replayed callback)."""
    with store.transaction() as connection:
        row = connection.execute(
            sa.select(smart_app_session.c.data)
            .where(smart_app_session.c.id == _key(session.id))
            .with_for_update()
        ).first()
        if row is None or row[0].get("stage") != "authorizing":
            return False
        data = dict(row[0])
        data["stage"] = "exchanging"
        connection.execute(
            smart_app_session.update()
            .where(smart_app_session.c.id == _key(session.id))
            .values(data=data)
        )
    session.data["stage"] = "exchanging"
    return True


def end_session(store: Store, session: AppSession) -> None:
    with store.transaction() as connection:
        connection.execute(
            smart_app_session.delete().where(smart_app_session.c.id == _key(session.id))
        )
