"""Per-client rate limits: a client over its rate gets 429, ``Retry-After`` and an
OperationOutcome; the others are not slowed.

A client is its JWT ``iss`` once the token has verified, else its address (unsigned
calls, other endpoints). Each client has a token bucket: ``CDS_RATE_LIMIT_PER_S`` calls
per second on average, bursts of up to ``CDS_RATE_LIMIT_BURST``.

How a signed service call is counted, so a forged token cannot use up another client's
budget: before anything else, a call whose token *claims* a trusted issuer is refused if
that issuer's bucket, or the caller address's, is already empty (nothing is taken); after
the token has verified, one call is taken from the issuer's bucket. A claimed issuer
whose call goes no further (a bad signature, an unknown service) is charged to the
caller's address instead, so a flood of forged tokens is throttled by its own address.

The buckets live in each worker process: across ``W`` workers and ``R`` replicas a
client that spreads its calls evenly may make up to ``W x R`` times the rate before every
process refuses it. The reverse proxy limits each address for the whole deployment as
well (``deploy/nginx.conf``, ``limit_req``). Behind a proxy the client address is taken
from ``X-Forwarded-For`` only when ``CDS_FORWARDED_FOR_HOPS`` says how many proxies to
trust; otherwise it is the peer address.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import jwt
from flask import Flask, Response, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from cds_service.auth import ClientIdentity
from cds_service.errors import TooManyRequests
from cds_service.settings import app_settings, current_settings

# Paths never limited: health checks and metrics are polled by the platform.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Most clients tracked at once per process; the least recently seen are forgotten first.
MAX_TRACKED_CLIENTS = 10_000


class TokenBuckets:
    """One token bucket per client key, refilled at ``rate_per_s`` up to ``burst``."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate_per_s)

    def _wait(self, tokens: float) -> float:
        return (1.0 - tokens) / self.rate_per_s

    def wait_for(self, key: str) -> float:
        """Seconds until ``key`` may call (0: now); nothing is taken."""
        with self._lock:
            tokens = self._level(key, self.clock())
        return 0.0 if tokens >= 1.0 else self._wait(tokens)

    def take(self, key: str) -> float:
        """Take one call from ``key``'s bucket: 0 when allowed, else the seconds to wait."""
        with self._lock:
            now = self.clock()
            tokens = self._level(key, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return 0.0 if allowed else self._wait(tokens)


def _buckets() -> TokenBuckets | None:
    return current_app.extensions.get("cds_rate_limits")


def _address_key() -> str:
    return f"addr:{request.remote_addr or '-'}"


def _claimed_trusted_issuer() -> str | None:
    """The ``iss`` the bearer token claims, if it names a trusted issuer (not verified)."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    trusted = current_settings().trusted_issuers
    return issuer if isinstance(issuer, str) and issuer in trusted else None


def _before_request() -> None:
    buckets = _buckets()
    if buckets is None or request.path in EXEMPT_PATHS or request.method == "OPTIONS":
        return
    issuer = None
    if request.method == "POST" and request.path.startswith("/cds-services/"):
        issuer = _claimed_trusted_issuer()
    if issuer is not None:
        g.cds_rate_limit_claimed = issuer
        # Refused while the issuer's budget is spent, or while this address's is (spent by
        # its calls that named an issuer but did not verify).
        wait = max(buckets.wait_for(f"iss:{issuer}"), buckets.wait_for(_address_key()))
    else:
        wait = buckets.take(_address_key())
    if wait > 0:
        raise TooManyRequests.after(wait)


def charge_verified_client(client: ClientIdentity | None) -> None:
    """Take one call from the verified client's budget (``TooManyRequests`` when spent).
    Unsigned calls were already counted by address."""
    buckets = _buckets()
    if buckets is None or client is None:
        return
    g.cds_rate_limit_charged = True
    wait = buckets.take(f"iss:{client.issuer}")
    if wait > 0:
        raise TooManyRequests.after(wait)


def _after_request(response: Response) -> Response:
    # A claimed issuer whose call never verified is charged to the caller's address.
    buckets = _buckets()
    if (
        buckets is not None
        and g.get("cds_rate_limit_claimed")
        and not g.get("cds_rate_limit_charged")
    ):
        buckets.take(_address_key())
    return response


def install_rate_limits(app: Flask) -> None:
    """Limit every client of ``app`` as its settings say (nothing when the rate is 0)."""
    settings = app_settings(app)
    hops = settings.forwarded_for_hops
    if hops:
        # Only the client address: absolute URLs never follow forwarded headers.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0
        )
    if not settings.rate_limit_per_s:
        return
    app.extensions["cds_rate_limits"] = TokenBuckets(
        settings.rate_limit_per_s, settings.rate_limit_burst
    )
    app.before_request(_before_request)
    app.after_request(_after_request)
