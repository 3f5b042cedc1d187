"""Where the access token may go, and how one query is read and its pages merged."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from cds_service import fhir_client
from cds_service.config import ConfigError
from cds_service.errors import FhirQueryFailed
from cds_service.fhir_client import (
    TIMED_OUT,
    TOO_MANY_PAGES,
    UNREADABLE,
    FhirQueryLimits,
    FhirReader,
    fetch_all,
    fhir_server_allowed,
    https_or_loopback,
    is_loopback_host,
    query_pool,
)
from cds_service.settings import Settings
from tests.misbehaving_fhir_server import MisbehavingFhirServer


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("localhost.evil.com", False),
        ("ehr.example.org", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://keys.example.org/jwks.json", True),
        ("https://KEYS.example.org", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://[::1]:8080/jwks", True),
        ("http://localhost/jwks", True),
        ("http://localhost./jwks", True),
        ("http://keys.example.org/jwks", False),
        ("http://localhost.evil.com/jwks", False),
        ("ftp://127.0.0.1/jwks", False),
        ("https:///jwks", False),
        ("https://[::1/jwks", False),
        ("keys.example.org/jwks", False),
        ("", False),
        (42, False),
        (None, False),
    ],
)
def test_https_or_loopback_http(url: object, allowed: bool) -> None:
    """The one rule for key URLs and browser addresses: https, plain http only on loopback,
    with the same loopback hosts as the FHIR allowlist."""
    assert https_or_loopback(url) is allowed


@pytest.mark.parametrize(
    ("base_url", "prefixes", "allowed"),
    [
        ("https://ehr.example.org/fhir", ["https://ehr.example.org"], True),
        ("https://ehr.example.org/fhir/r4", ["https://ehr.example.org/fhir"], True),
        ("https://EHR.example.org/fhir", ["https://ehr.example.org/fhir/"], True),
        ("https://ehr.example.org:8443/fhir", ["https://ehr.example.org"], True),
        ("https://ehr.example.org.evil.com/fhir", ["https://ehr.example.org"], False),
        ("https://ehr.example.org/fhir-evil", ["https://ehr.example.org/fhir"], False),
        ("https://ehr.example.org/other", ["https://ehr.example.org/fhir"], False),
        ("https://ehr.example.org:8443/fhir", ["https://ehr.example.org:443"], False),
        ("http://ehr.example.org/fhir", ["http://ehr.example.org"], False),  # no TLS
        ("http://ehr.example.org/fhir", ["https://ehr.example.org"], False),
        ("https://user:pw@ehr.example.org/fhir", ["https://ehr.example.org"], False),
        ("https://ehr.example.org/fhir?x=1", ["https://ehr.example.org"], False),
        ("ftp://ehr.example.org/fhir", ["ftp://ehr.example.org"], False),
        ("https://ehr.example.org/fhir", [], False),
        ("http://127.0.0.1:8080/fhir", ["http://127.0.0.1"], True),
        ("http://localhost:9/fhir", ["http://localhost"], True),
        ("http://[::1]:9/fhir", ["http://[::1]"], True),
        ("http://127.0.0.1:8080/fhir", ["http://localhost"], False),
        ("not a url", ["https://ehr.example.org"], False),
        ("https://ehr.example.org/fhir/../admin", ["https://ehr.example.org/fhir"], False),
        ("https://ehr.example.org/fhir/%2e%2E/admin", ["https://ehr.example.org/fhir"], False),
    ],
)
def test_fhir_server_allowlist(base_url: str, prefixes: list[str], allowed: bool) -> None:
    assert fhir_server_allowed(base_url, prefixes) is allowed


def _reader(base: str, **limits: float) -> FhirReader:
    settings = FhirQueryLimits(**{"deadline_s": 2.0, "call_timeout_s": 1.0, **limits})
    return FhirReader(
        base_url=base, access_token="tok", deadline=time.monotonic() + 2.0, limits=settings
    )


def test_pages_are_merged_into_one_searchset(fhir_faults: MisbehavingFhirServer) -> None:
    bundle = _reader(fhir_faults.base("paged")).fetch("Condition?patient=p1")
    assert bundle == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 3,
        "entry": [{"resource": {"resourceType": "Condition", "id": f"c{i}"}} for i in range(3)],
    }
    assert [s.authorization for s in fhir_faults.requests_seen] == ["Bearer tok"] * 3


def test_page_cap_stops_an_endless_search(fhir_faults: MisbehavingFhirServer) -> None:
    with pytest.raises(FhirQueryFailed) as failure:
        _reader(fhir_faults.base("endless"), max_pages=4).fetch("Condition")
    assert failure.value.reason == TOO_MANY_PAGES
    assert len(fhir_faults.requests_seen) == 4


def test_fetch_all_returns_by_the_deadline(fhir_faults: MisbehavingFhirServer) -> None:
    reader = FhirReader(
        base_url=fhir_faults.base("slow"),
        access_token=None,
        deadline=time.monotonic() + 0.3,
        limits=FhirQueryLimits(deadline_s=0.3, call_timeout_s=5.0),
    )
    started = time.monotonic()
    results = fetch_all(reader, {"a": "Condition", "b": "Observation"})
    assert time.monotonic() - started < 0.6
    assert {key: r.reason for key, r in results.items()} == {"a": TIMED_OUT, "b": TIMED_OUT}
    assert all(s.authorization is None for s in fhir_faults.requests_seen)


class _ThreadRecordingReader(FhirReader):
    """A reader that notes which thread ran each of its queries."""

    threads_used: set[threading.Thread]

    def run(self, job: str | Mapping[str, Any]) -> Any:
        self.threads_used.add(threading.current_thread())
        return super().run(job)


def _recording_reader(base: str, limits: FhirQueryLimits) -> _ThreadRecordingReader:
    reader = _ThreadRecordingReader(
        base_url=base, access_token=None, deadline=time.monotonic() + 2.0, limits=limits
    )
    reader.threads_used = set()
    return reader


def test_every_call_of_a_worker_runs_on_its_one_query_pool(
    fhir_faults: MisbehavingFhirServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = FhirQueryLimits(call_timeout_s=1.0, queries_per_call=2, pool_threads=3)
    threads_used: set[threading.Thread] = set()
    for _ in range(4):
        reader = _recording_reader(fhir_faults.base("ok"), limits)
        results = fetch_all(reader, {"a": "Condition", "b": "Observation", "c": "Patient/p1"})
        assert all(isinstance(result, dict) for result in results.values()), results
        threads_used |= reader.threads_used
    pool = query_pool(3)
    assert query_pool(3) is pool
    # Twelve queries over four calls, on the same three threads at most.
    assert len(threads_used) <= 3
    # A forked worker finds the pool of another process and makes its own.
    monkeypatch.setattr(fhir_client, "_pool_pid", -1)
    assert query_pool(3) is not pool
    # A new size replaces the pool; a call still holding the old one runs its queries.
    held = query_pool(3)
    assert query_pool(4) is not held
    assert held.submit(lambda: "ran").result(timeout=5) == "ran"


def test_a_call_to_a_hung_server_leaves_threads_for_the_other_calls(
    fhir_faults: MisbehavingFhirServer,
) -> None:
    limits = FhirQueryLimits(deadline_s=2.5, call_timeout_s=2.5, queries_per_call=2, pool_threads=3)
    hung = FhirReader(
        base_url=fhir_faults.base("slow"),
        access_token=None,
        deadline=time.monotonic() + 2.5,
        limits=limits,
    )
    hung_results: dict[str, Any] = {}
    hung_call = threading.Thread(
        target=lambda: hung_results.update(fetch_all(hung, {k: "Condition" for k in "abcdef"}))
    )
    hung_call.start()
    waited = time.monotonic()
    while len(fhir_faults.requests_seen) < 2 and time.monotonic() - waited < 2.0:
        time.sleep(0.01)
    started = time.monotonic()
    reader = _recording_reader(fhir_faults.base("ok"), limits)
    results = fetch_all(reader, {"a": "Condition", "b": "Observation"})
    elapsed = time.monotonic() - started
    assert hung_call.is_alive(), "the hung call ended before the other call was answered"
    assert all(isinstance(result, dict) for result in results.values()), results
    assert elapsed < 1.5
    hung_call.join(timeout=10)
    # The hung call never had more than its two queries at once on the server.
    slow_seen = [s for s in fhir_faults.requests_seen if s.path.startswith("/slow/")]
    assert len(slow_seen) == 2
    assert {r.reason for r in hung_results.values()} == {TIMED_OUT}
    assert len(hung_results) == 6


def test_query_pool_settings_keep_a_bulkhead() -> None:
    settings = Settings.load(
        environ={"CDS_FHIR_QUERY_THREADS": "8", "CDS_FHIR_QUERIES_PER_CALL": "3"}
    )
    limits = settings.fhir_limits
    assert (limits.pool_threads, limits.queries_per_call) == (8, 3)
    with pytest.raises(ConfigError):
        Settings.load(environ={"CDS_FHIR_QUERY_THREADS": "4", "CDS_FHIR_QUERIES_PER_CALL": "4"})


def test_fhir_limits_come_from_the_environment() -> None:
    settings = Settings.load(environ={"CDS_FHIR_DEADLINE_S": "1.5", "CDS_FHIR_MAX_PAGES": "3"})
    limits = settings.fhir_limits
    assert (limits.deadline_s, limits.max_pages) == (1.5, 3)
    with pytest.raises(ConfigError):
        Settings.load(environ={"CDS_FHIR_DEADLINE_S": "0"})
    with pytest.raises(ConfigError):
        Settings.load(environ={"CDS_FHIR_MAX_PAGES": "many"})


def test_encoded_separators_cannot_climb_out_of_an_allowed_path() -> None:
    allowed = ["https://ehr.example.org/fhir"]
    assert fhir_server_allowed("https://ehr.example.org/fhir/r4", allowed)
    for sneaky in (
        "https://ehr.example.org/fhir/..%2f..%2fadmin",
        "https://ehr.example.org/fhir/..%5Cadmin",
        "https://ehr.example.org/fhir;jsessionid=x",
    ):
        assert not fhir_server_allowed(sneaky, allowed), sneaky


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient", "id": "p", "multipleBirthInteger": ' + b"7" * 5000 + b"}",
        b'{"resourceType": "Patient", "id": "p", "multipleBirthInteger": NaN}',
    ],
)
def test_an_answer_that_is_not_json_is_unreadable_not_an_error(body: bytes) -> None:
    with pytest.raises(FhirQueryFailed) as failed:
        FhirReader._interpret(200, body)
    assert failed.value.reason == UNREADABLE
