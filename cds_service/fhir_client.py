"""Read-only queries to the EHR's FHIR server (``fhirServer``), for what prefetch lacked.

Where the client's access token may go is decided here and nowhere else:

- only to a base URL the calling client may point us at (``fhir_server_allowed``): a
  prefix of the issuer's ``fhir_servers`` list, else of ``CDS_FHIR_SERVERS``, matched on
  scheme, host, port and whole path segments (``https://ehr.example.org`` does not admit
  ``https://ehr.example.org.evil.test``; a prefix that names no port admits any port of
  its host);
- over https, or plain http to a loopback host only (127.0.0.0/8, ::1, localhost);
- never along a redirect (redirects are not followed: the query fails), and to a
  ``next`` page link only when it lies under the same base URL.

Every query of one request shares one deadline; each HTTP call also has its own timeout,
and a response is read in small pieces so that neither a huge body nor a slow trickle
holds the request past the deadline. A failure never escapes as an exception other than
``FhirQueryFailed``, whose ``reason`` is short and fit to show a clinician.

The queries run on one pool of threads per process (``CDS_FHIR_QUERY_THREADS``), made on
first use in each process, so a pool is never inherited across a fork. It is shared by
every call, behind a bulkhead: one call runs at most ``CDS_FHIR_QUERIES_PER_CALL`` of its
queries at once, so the threads a call to a hung server holds are never all of them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from cds_service import operations
from cds_service.config import DEFAULTS
from cds_service.errors import FhirQueryFailed
from cds_service.json_input import UnreadableJson, loads_untrusted

if TYPE_CHECKING:
    from cds_service.settings import Settings

logger = logging.getLogger(__name__)

# Reasons shown to clinicians (cards, CRD ``reason``); any of them means a technical failure.
TIMED_OUT = "the EHR's FHIR server did not answer in time"
REFUSED = "the EHR's FHIR server refused access"
NOT_FOUND = "not found on the EHR's FHIR server"
SERVER_ERROR = "the EHR's FHIR server reported an error"
UNREADABLE = "the EHR's FHIR server sent an unreadable answer"
TOO_LARGE = "the EHR's FHIR server's answer was too large"
TOO_MANY_PAGES = "the EHR's FHIR server's answer had too many pages"
REDIRECTED = "the EHR's FHIR server redirected the query elsewhere"
UNREACHABLE = "the EHR's FHIR server could not be reached"
NOT_ALLOWED = "the EHR's FHIR server is not one this service may query"

_READ_PIECE = 64 * 1024


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: the only hosts plain http may reach."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def https_or_loopback(url: object) -> bool:
    """Whether ``url`` names a host over https, or over plain http a loopback host
    (``is_loopback_host``): where the service may fetch keys or send a browser."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host))


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    path: str  # without trailing slash
    explicit_port: bool


def _parse_base(url: str) -> _Origin | None:
    """A base URL split for comparison, or None when it is not one we could ever call."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.fragment:
        return None
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return None
    # Dot segments (plain or percent-encoded) could climb out of a base path once normalised,
    # and so could encoded separators ("..%2f..%2fadmin") that a server decodes before routing.
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return None
    if any(token in parts.path.lower() for token in ("%2f", "%5c", "\\", ";")):
        return None
    default_port = 443 if parts.scheme == "https" else 80
    return _Origin(
        parts.scheme,
        parts.hostname.lower(),
        port or default_port,
        parts.path.rstrip("/"),
        port is not None,
    )


def is_under(url: str, base: str, *, any_port_without_one: bool = False) -> bool:
    """Whether ``url`` lies under ``base``: same scheme, host and port, whole path segments.

    With ``any_port_without_one``, a ``base`` that names no port admits every port of its
    host (an allowlist entry ``http://127.0.0.1`` covers local servers on any port).
    """
    target, prefix = _parse_base(url.split("?", 1)[0]), _parse_base(base)
    if target is None or prefix is None:
        return False
    if (target.scheme, target.host) != (prefix.scheme, prefix.host):
        return False
    if target.port != prefix.port and (prefix.explicit_port or not any_port_without_one):
        return False
    return target.path == prefix.path or target.path.startswith(prefix.path + "/")


def fhir_server_allowed(base_url: str, allowed_prefixes: Sequence[str]) -> bool:
    """Whether the token may be sent to ``base_url``: https (or loopback http), under a prefix."""
    if _parse_base(base_url) is None or "?" in base_url:
        return False
    return any(is_under(base_url, prefix, any_port_without_one=True) for prefix in allowed_prefixes)


def allowed_fhir_servers(settings: Settings, issuer: str | None) -> list[str]:
    """The base URL prefixes a client may point the service (and its access token) at:
    its issuer's ``fhir_servers`` in ``CDS_TRUSTED_ISSUERS`` (a list of strings: checked at
    start-up), else ``CDS_FHIR_SERVERS``."""
    entry = settings.trusted_issuers.get(issuer) if issuer is not None else None
    if entry is not None and "fhir_servers" in entry:
        return list(entry["fhir_servers"])
    return list(settings.fhir_servers)


# One pooled session per process (re-created after a fork), shared by all threads.
_session_lock = threading.Lock()
_session: requests.Session | None = None
_session_pid = 0


def _new_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies, no .netrc credentials added behind our back
    # No cookie from one EHR is ever sent anywhere (nor back to it).
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=32, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def shared_session() -> requests.Session:
    """The process's pooled HTTP session for FHIR queries."""
    global _session, _session_pid
    with _session_lock:
        if _session is None or _session_pid != os.getpid():
            _session, _session_pid = _new_session(), os.getpid()
        return _session


def close_shared_session() -> None:
    """Close the pooled session (its sockets); the next query opens a new one."""
    global _session
    with _session_lock:
        if _session is not None and _session_pid == os.getpid():
            _session.close()
        _session = None


@dataclass(frozen=True, slots=True)
class FhirQueryLimits:
    """How long and how much one request's queries may take, how many of them run at once,
    and the threads of the process's query pool they run on."""

    deadline_s: float = DEFAULTS["FHIR_DEADLINE_S"]
    call_timeout_s: float = DEFAULTS["FHIR_CALL_TIMEOUT_S"]
    max_pages: int = DEFAULTS["FHIR_MAX_PAGES"]
    max_response_bytes: int = DEFAULTS["FHIR_MAX_RESPONSE_BYTES"]
    queries_per_call: int = DEFAULTS["FHIR_QUERIES_PER_CALL"]
    pool_threads: int = DEFAULTS["FHIR_QUERY_THREADS"]


@dataclass
class FhirReader:
    """Queries one FHIR server with one access token until one deadline (monotonic)."""

    base_url: str
    access_token: str | None = field(repr=False)
    deadline: float
    limits: FhirQueryLimits
    session: requests.Session = field(repr=False, default_factory=shared_session)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def _remaining(self) -> float:
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise FhirQueryFailed(TIMED_OUT, "deadline passed")
        return remaining

    def _get_json(self, url: str) -> Any:
        """GET one URL under the base and return its JSON, within every limit."""
        if not is_under(url, self.base_url):
            raise FhirQueryFailed(NOT_ALLOWED, "URL outside the FHIR base")
        timeout = min(self.limits.call_timeout_s, self._remaining())
        headers = {"Accept": "application/fhir+json, application/json"}
        if self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        try:
            response = self.session.get(
                url,
                headers=headers,
                timeout=(timeout, timeout),
                stream=True,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise FhirQueryFailed(TIMED_OUT, type(exc).__name__) from None
        except requests.RequestException as exc:
            raise FhirQueryFailed(UNREACHABLE, type(exc).__name__) from None
        with response:
            body = self._read_body(response)
        return self._interpret(response.status_code, body)

    def _read_body(self, response: requests.Response) -> bytes:
        limit = self.limits.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FhirQueryFailed(TOO_LARGE, f"Content-Length {declared}")
        if 300 <= response.status_code < 400:
            return b""
        pieces, size = [], 0
        try:
            while True:
                self._remaining()
                # read1: at most one socket read, so a trickling server cannot hold us.
                piece = response.raw.read1(_READ_PIECE, decode_content=True)
                if not piece:
                    break
                size += len(piece)
                if size > limit:
                    raise FhirQueryFailed(TOO_LARGE, f"more than {limit} bytes")
                pieces.append(piece)
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise FhirQueryFailed(TIMED_OUT, type(exc).__name__) from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise FhirQueryFailed(UNREACHABLE, type(exc).__name__) from None
        return b"".join(pieces)

    @staticmethod
    def _interpret(status: int, body: bytes) -> Any:
        if 300 <= status < 400:
            raise FhirQueryFailed(REDIRECTED, f"HTTP {status}")
        if status in (401, 403):
            raise FhirQueryFailed(REFUSED, f"HTTP {status}")
        if status in (404, 410):
            raise FhirQueryFailed(NOT_FOUND, f"HTTP {status}")
        if status != 200:
            raise FhirQueryFailed(SERVER_ERROR, f"HTTP {status}")
        try:
            value = loads_untrusted(body)
        except UnreadableJson:
            raise FhirQueryFailed(UNREADABLE, "not JSON") from None
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise FhirQueryFailed(UNREADABLE, "not a FHIR resource")
        if value["resourceType"] == "OperationOutcome":
            raise FhirQueryFailed(SERVER_ERROR, "OperationOutcome")
        return value

    def fetch(self, query: str) -> Any:
        """Run a read (``Type/id``) or search (``Type?...``) relative to the base URL.

        A search's pages are followed (``next`` links under the same base only, up to
        ``max_pages``) and merged into one searchset Bundle.
        """
        url = f"{self.base_url}/{query.lstrip('/')}"
        first = self._get_json(url)
        if not isinstance(first, dict) or first.get("resourceType") != "Bundle":
            return first
        return self._merge_pages(first, url)

    def fetch_remaining_pages(self, first: Mapping[str, Any]) -> dict[str, Any]:
        """Complete a paginated Bundle the client sent: its ``next`` pages, merged."""
        return self._merge_pages(first, f"{self.base_url}/")

    def _merge_pages(self, first: Mapping[str, Any], url: str) -> dict[str, Any]:
        entries = list(first.get("entry") or [])
        page, pages = first, 1
        while (next_url := next_link(page)) is not None:
            if pages >= self.limits.max_pages:
                raise FhirQueryFailed(TOO_MANY_PAGES, f"more than {self.limits.max_pages} pages")
            next_url = urljoin(url, next_url)
            if not is_under(next_url, self.base_url):
                raise FhirQueryFailed(NOT_ALLOWED, "next link outside the FHIR base")
            page = self._get_json(next_url)
            if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                raise FhirQueryFailed(UNREADABLE, "a next page is not a Bundle")
            entries += page.get("entry") or []
            pages += 1
        merged: dict[str, Any] = {"resourceType": "Bundle", "type": first.get("type", "searchset")}
        merged["total"] = first["total"] if isinstance(first.get("total"), int) else len(entries)
        if entries:
            merged["entry"] = entries
        return merged

    def run(self, job: str | Mapping[str, Any]) -> Any:
        """A query (str) or the first page of a Bundle to complete (a mapping)."""
        return self.fetch(job) if isinstance(job, str) else self.fetch_remaining_pages(job)


def next_link(bundle: Any) -> str | None:
    """The ``next`` link of a Bundle page, if it has one."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        return None
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


# One pool of query threads per process (made again after a fork, or for a new size).
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_threads = 0


def query_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` query threads, shared by every call.

    Made on first use in each process: a server that forks its workers after loading the
    app hands them no pool (a pool's threads do not survive a fork). A pool of another
    size (a new setting) replaces it; the old one is not shut down, so a call that holds
    it still runs its queries there, and its threads end once no call holds it.
    """
    global _pool, _pool_pid, _pool_threads
    with _pool_lock:
        pid = os.getpid()
        if _pool is None or _pool_pid != pid or _pool_threads != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir-query")
            _pool_pid, _pool_threads = pid, threads
        return _pool


def _run_queries(
    reader: FhirReader, queue: deque[tuple[Future[Any], str | Mapping[str, Any]]]
) -> None:
    """Run a call's queries one after another until none is left. A call has at most
    ``queries_per_call`` of these on the pool: its bulkhead. A query cancelled (its
    call's deadline passed before it started) is skipped."""
    while True:
        try:
            outcome, job = queue.popleft()
        except IndexError:
            return
        if not outcome.set_running_or_notify_cancel():
            continue
        try:
            outcome.set_result(reader.run(job))
        except Exception as exc:  # handed to the call, which tells failures apart
            outcome.set_exception(exc)


def fetch_all(reader: FhirReader, queries: Mapping[str, str | Mapping[str, Any]]) -> dict[str, Any]:
    """Run every job in parallel on the process's query pool, at most
    ``queries_per_call`` at once (a query, or a Bundle whose next pages to fetch); each
    key maps to its value or its ``FhirQueryFailed``.

    Returns by the reader's deadline at the latest: a query still running or not yet
    started then counts as timed out (a running one stops by itself at its next read; one
    not started never runs).
    """
    results: dict[str, Any] = {}
    if not queries:
        return results
    outcomes: dict[str, Future[Any]] = {key: Future() for key in queries}
    queue = deque((outcomes[key], job) for key, job in queries.items())
    pool = query_pool(reader.limits.pool_threads)
    runners = [
        pool.submit(_run_queries, reader, queue)
        for _ in range(min(len(queries), reader.limits.queries_per_call))
    ]
    remaining = max(0.0, reader.deadline - reader.clock())
    done, _ = wait(outcomes.values(), timeout=remaining, return_when=ALL_COMPLETED)
    for key, outcome in outcomes.items():
        if outcome not in done:
            outcome.cancel()
            results[key] = FhirQueryFailed(TIMED_OUT, "deadline passed")
            continue
        error = outcome.exception()
        if error is None:
            results[key] = outcome.result()
        elif isinstance(error, FhirQueryFailed):
            results[key] = error
        else:
            logger.error("FHIR query for %s failed unexpectedly", key, exc_info=error)
            results[key] = FhirQueryFailed(UNREADABLE, type(error).__name__)
    for runner in runners:
        runner.cancel()  # still waiting for a thread: its call needs it no more
    operations.count_fhir_failures(results.values())
    return results
