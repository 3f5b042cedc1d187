"""Fuzzing the service over its HTTP interface (Flask test client), with hypothesis.

Inputs start from real shapes: the request fixtures (every hook), the FHIR resources they
carry (every resource type the service reads as prefetch or as a draft order), a valid
feedback body, and every route the app has (``url_map``, so routes added later are
fuzzed too). Each is mutated: values replaced by other JSON types, keys removed or
added, containers wrapped, strings swapped for awkward ones (lone surrogates, NUL, very
long), bodies replaced by random bytes.

What must hold for every answer: no 5xx; every 4xx an OperationOutcome (an HTML page on
pages meant for people, an RFC 6749 error on the OAuth token endpoint); no stack trace or
internal path in any answer.

One class of 500 is known and fixed elsewhere: an exception raised inside
``fhir_mappings/{record,codes,episodes,r4}.py`` on a malformed resource. Those are
counted and listed apart (``routed``), not failed on, so this fuzz guards everything
else meanwhile; once they are fixed the list stays empty.

``python -m tests.fuzz [--scale N] [--seed S]`` runs a longer fuzz (``make fuzz``) and
prints requests, statuses, distinct failures and the slowest answer.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cds_service.error_pages import is_people_page
from hooks import SERVICES
from hooks.service import ENCOUNTER_PREFETCH, PATIENT_PREFETCH

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = sorted((ROOT / "fixtures" / "requests").glob("*.json"))
# Where a 500 is known to come from and is being fixed in those files (see module doc).
ROUTED_FILES = tuple(f"fhir_mappings/{name}.py" for name in ("record", "codes", "episodes", "r4"))
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", '.py"', "/work/", str(ROOT))

AWKWARD_STRINGS = [
    "",
    " ",
    "\ud800",
    "x\udfffy",
    "\x00",
    "null",
    "{{context.patientId}}",
    "../../etc/passwd",
    "Patient/",
    "Patient/../../x",
    "urn:uuid:",
    "http://",
    "💉" * 50,
    "a" * 5000,
    "2026-02-30",
    "-1",
    "1e309",
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(AWKWARD_STRINGS),
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _hook_of(path: Path) -> str:
    return path.name.split("__", 1)[0]


SERVICE_FOR_HOOK = {service.hook: service.id for service in SERVICES.values()}
FIXTURES_BY_HOOK: dict[str, list[Path]] = {}
for _path in REQUESTS:
    FIXTURES_BY_HOOK.setdefault(_hook_of(_path), []).append(_path)

# The prefetch key each resource type the service reads arrives in.
PREFETCH_KEY_OF_TYPE: dict[str, str] = {}
for _key, _template in {**PATIENT_PREFETCH, **ENCOUNTER_PREFETCH}.items():
    PREFETCH_KEY_OF_TYPE.setdefault(_template.split("?")[0].split("/")[0], _key)
DRAFT_ORDER_TYPES = ("DeviceRequest", "MedicationRequest")


def _sample_resources() -> dict[str, list[dict[str, Any]]]:
    """Every resource the fixtures carry, by type; a minimal one for types they lack."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in REQUESTS:
        body = _load(path)
        entries = list((body.get("context", {}).get("draftOrders") or {}).get("entry", []))
        for value in (body.get("prefetch") or {}).values():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                entries += value.get("entry", [])
            elif isinstance(value, dict):
                entries.append({"resource": value})
        for entry in entries:
            resource = entry.get("resource")
            if isinstance(resource, dict) and len(found.get(resource["resourceType"], [])) < 8:
                found.setdefault(resource["resourceType"], []).append(resource)
    for resource_type in (*PREFETCH_KEY_OF_TYPE, *DRAFT_ORDER_TYPES):
        found.setdefault(
            resource_type,
            [{"resourceType": resource_type, "id": "x1", "patient": {"reference": "Patient/p"}}],
        )
    return found


SAMPLE_RESOURCES = _sample_resources()
RESOURCE_TYPES = sorted(SAMPLE_RESOURCES)
BASE_SIGN = _load(ROOT / "fixtures" / "requests" / "order-sign__e0784-insulin__covered.json")
FEEDBACK_BODY = {
    "feedback": [
        {
            "card": "00000000-0000-4000-8000-000000000001",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": "http://example.org/reasons", "code": "x", "display": "X"},
                "userComment": "text",
            },
            "acceptedSuggestions": [{"id": "00000000-0000-4000-8000-000000000002"}],
            "outcomeTimestamp": "2026-11-28T15:04:05Z",
        }
    ]
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document


@st.composite
def mutated(draw: st.DrawFn, original: Any, max_mutations: int = 3) -> Any:
    """``original`` with one to ``max_mutations`` structural or type mutations."""
    document = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        if not path:
            document = draw(json_values) if draw(st.booleans()) else [document]
            continue
        parent, last = _at(document, path[:-1]), path[-1]
        operation = draw(st.sampled_from(["replace", "delete", "wrap", "add", "awkward"]))
        if operation == "replace":
            parent[last] = draw(json_values)
        elif operation == "delete":
            del parent[last]
        elif operation == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"value": parent[last]}]))
        elif operation == "awkward":
            parent[last] = draw(st.sampled_from(AWKWARD_STRINGS))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return document


@dataclass
class Observed:
    """What the fuzz saw; ``strict`` raises on the first violation (in the test suite)."""

    strict: bool = True
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    routed: dict[str, str] = field(default_factory=dict)
    max_latency_s: float = 0.0
    slowest: str = ""

    def fail(self, signature: str, example: str) -> None:
        self.failures.setdefault(signature, example)
        if self.strict:
            raise AssertionError(f"{signature}\n  example: {example}")

    def report(self) -> str:
        lines = [
            f"requests: {self.requests}",
            "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            f"max latency: {self.max_latency_s * 1000:.0f} ms ({self.slowest})",
            f"distinct failures: {len(self.failures)}",
        ]
        lines += [f"  {sig}\n    example: {ex}" for sig, ex in self.failures.items()]
        lines.append(
            f"500s inside {', '.join(ROUTED_FILES)} (fixed there; not failed on): "
            f"{len(self.routed)} distinct"
        )
        lines += [f"  {sig}\n    example: {ex}" for sig, ex in self.routed.items()]
        return "\n".join(lines)


class _ExceptionCatcher(logging.Handler):
    """Keeps the exception behind the last 500 the app logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.last = record.exc_info[1]


def _signature(exc: BaseException) -> tuple[str, bool]:
    """Where in our code ``exc`` was raised, and whether that is a routed file."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if str(ROOT) in f.filename and "/.venv/" not in f.filename
    ]
    # Routed only when raised there (the innermost frame of the project's code).
    routed = bool(frames) and frames[-1].filename.endswith(ROUTED_FILES)
    where = f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else "?"
    return f"500 {type(exc).__name__} at {where}", routed


# An OAuth endpoint: its errors are RFC 6749 section 5.2 bodies, not OperationOutcomes.
OAUTH_TOKEN_PATH = "/auth/token"


class Fuzzer:
    """Sends requests to one app and checks every answer."""

    def __init__(self, app: Flask, observed: Observed) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.observed = observed
        self.catcher = _ExceptionCatcher()
        self.logger = logging.getLogger("cds_service")
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.ERROR:
            self.logger.setLevel(logging.ERROR)
        self.logger.addHandler(self.catcher)

    def close(self) -> None:
        self.logger.removeHandler(self.catcher)
        self.logger.setLevel(self.level)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.catcher.last = None
        started = time.perf_counter()
        response = self.client.open(
            path,
            method=method,
            data=body,
            headers={"Content-Type": content_type} if body is not None else {},
        )
        elapsed = time.perf_counter() - started
        data = response.get_data()
        observed = self.observed
        observed.requests += 1
        observed.statuses[response.status_code] += 1
        example = f"{method} {path[:120]} body={(body or b'')[:300]!r}"
        if elapsed > observed.max_latency_s:
            observed.max_latency_s, observed.slowest = elapsed, f"{method} {path[:60]}"
        text = data.decode("utf-8", "replace")
        for marker in LEAK_MARKERS:
            if marker in text:
                observed.fail(f"{response.status_code} answer shows {marker!r}", example)
        if response.status_code >= 500:
            exc = self.catcher.last
            signature, routed = _signature(exc) if exc else (f"{response.status_code}", False)
            if routed:
                observed.routed.setdefault(signature, example)
                return
            observed.fail(signature, example)
            return
        if response.status_code >= 400:
            self._check_outcome(response.status_code, response.mimetype, data, path, example)

    def _check_outcome(
        self, status: int, mimetype: str | None, data: bytes, path: str, example: str
    ) -> None:
        if is_people_page(path.split("?")[0]) and mimetype == "text/html":
            return
        try:
            outcome = json.loads(data)
        except ValueError:
            self.observed.fail(f"{status} answer is not JSON ({mimetype})", example)
            return
        if path.split("?")[0] == OAUTH_TOKEN_PATH:
            if not (
                isinstance(outcome, dict)
                and isinstance(outcome.get("error"), str)
                and isinstance(outcome.get("error_description"), str)
            ):
                self.observed.fail(f"{status} answer is not an RFC 6749 error", example)
            return
        if not (
            isinstance(outcome, dict)
            and outcome.get("resourceType") == "OperationOutcome"
            and isinstance(outcome.get("issue"), list)
            and outcome["issue"]
        ):
            self.observed.fail(f"{status} answer is not an OperationOutcome", example)


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


def _with_resource(resource: Any, resource_type: str, placement: str) -> dict[str, Any]:
    body = copy.deepcopy(BASE_SIGN)
    if resource_type in DRAFT_ORDER_TYPES and placement == "draft order":
        body["context"]["draftOrders"]["entry"].append({"resource": resource})
        return body
    key = PREFETCH_KEY_OF_TYPE.get(resource_type, "observations")
    if placement == "alone" or key in ("patient", "encounter"):
        body["prefetch"][key] = resource
    else:
        body["prefetch"][key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"fullUrl": f"urn:uuid:{resource_type}", "resource": resource}],
        }
    return body


def _route_urls(app: Flask) -> list[tuple[str, str, list[str]]]:
    """(rule, method, argument names) for every route of the app."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method, sorted(rule.arguments)))
    return found


Scenario = Callable[[Fuzzer, int, int], None]


def fuzz_envelopes(fuzzer: Fuzzer, examples: int, seed_value: int) -> None:
    """Every hook's fixture requests, mutated, to their service."""

    @seed(seed_value)
    @settings(**_settings(examples))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        hook = data.draw(st.sampled_from(sorted(FIXTURES_BY_HOOK)))
        original = _load(data.draw(st.sampled_from(FIXTURES_BY_HOOK[hook])))
        body = data.draw(mutated(original))
        fuzzer.send("POST", f"/cds-services/{SERVICE_FOR_HOOK[hook]}", _dumps(body))

    run()


def fuzz_resources(resource_type: str) -> Scenario:
    """One resource type, mutated, as prefetch (in a Bundle or alone) or as a draft order."""

    def scenario(fuzzer: Fuzzer, examples: int, seed_value: int) -> None:
        @seed(seed_value)
        @settings(**_settings(examples))
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            resource = data.draw(
                mutated(data.draw(st.sampled_from(SAMPLE_RESOURCES[resource_type])))
            )
            placement = data.draw(st.sampled_from(["bundle", "alone", "draft order"]))
            body = _with_resource(resource, resource_type, placement)
            fuzzer.send("POST", f"/cds-services/{SERVICE_FOR_HOOK['order-sign']}", _dumps(body))

        run()

    return scenario


def fuzz_feedback(fuzzer: Fuzzer, examples: int, seed_value: int) -> None:
    """A valid feedback body, mutated, or any JSON, to every service's feedback endpoint."""

    @seed(seed_value)
    @settings(**_settings(examples))
    @given(
        service_id=st.sampled_from(sorted(SERVICES)),
        body=st.one_of(mutated(FEEDBACK_BODY), json_values),
    )
    def run(service_id: str, body: Any) -> None:
        fuzzer.send("POST", f"/cds-services/{service_id}/feedback", _dumps(body))

    run()


def fuzz_routes(fuzzer: Fuzzer, examples: int, seed_value: int) -> None:
    """Every route of the app (the /fhir ones included), odd path values and parameters,
    any method it takes, with or without a body."""
    routes = _route_urls(fuzzer.app)
    segment = st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(AWKWARD_STRINGS[1:]))

    @seed(seed_value)
    @settings(**_settings(examples))
    @given(
        route=st.sampled_from(routes),
        values=st.lists(segment, min_size=3, max_size=3),
        query=st.lists(
            st.tuples(
                st.sampled_from(["url", "_id", "_format", "x", "_count", "patient"]), segment
            ),
            max_size=3,
        ),
        body=st.one_of(st.none(), json_values.map(_dumps), st.binary(max_size=64)),
    )
    def run(
        route: tuple[str, str, list[str]],
        values: list[str],
        query: list[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        rule, method, arguments = route
        path = rule
        for name, value in zip(arguments, values, strict=False):
            path = path.replace(f"<{name}>", quote(value, safe="", errors="surrogatepass"))
            path = path.replace(f"<path:{name}>", quote(value, safe="/", errors="surrogatepass"))
        if query:
            path += "?" + urlencode(query, errors="surrogatepass")
        fuzzer.send(method, path, body)

    run()


def fuzz_raw_bodies(fuzzer: Fuzzer, examples: int, seed_value: int) -> None:
    """Bodies that are not JSON, or not UTF-8, with any content type, to every POST route."""
    targets = [rule for rule, method, args in _route_urls(fuzzer.app) if method == "POST"]

    @seed(seed_value)
    @settings(**_settings(examples))
    @given(
        rule=st.sampled_from(targets),
        body=st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b'{"hook": "order-sign", "n": ' + b"1" * 5000 + b"}",
                    b'{"a": NaN}',
                    b'{"a": "\\ud800"}',
                    b"\xff\xfe{\x00}\x00",
                    b'{"a":' * 5000,
                    b"[" * 100000,
                ]
            ),
        ),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "application/fhir+json", "", "multipart/form-data"]
        ),
    )
    def run(rule: str, body: bytes, content_type: str) -> None:
        path = rule.replace("<service_id>", sorted(SERVICES)[0])
        fuzzer.send("POST", path, body, content_type)

    run()


def _settings(examples: int) -> dict[str, Any]:
    return {
        "max_examples": examples,
        "deadline": None,
        "database": None,
        "derandomize": False,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
        "print_blob": False,
    }


def scenarios() -> dict[str, tuple[Scenario, int]]:
    """Each scenario with its share of examples in the bounded test run."""
    found: dict[str, tuple[Scenario, int]] = {
        "envelopes": (fuzz_envelopes, 80),
        "feedback": (fuzz_feedback, 40),
        "routes": (fuzz_routes, 60),
        "raw bodies": (fuzz_raw_bodies, 30),
    }
    for resource_type in RESOURCE_TYPES:
        found[f"resource {resource_type}"] = (fuzz_resources(resource_type), 20)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20, help="examples x the test run's")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from tests.conftest import make_app

    logging.basicConfig(level=logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.CRITICAL)  # the 500s' stack traces are summarised below
    app = make_app()
    observed = Observed(strict=False)
    fuzzer = Fuzzer(app, observed)
    started = time.perf_counter()
    try:
        for name, (scenario, examples) in scenarios().items():
            before = observed.requests
            scenario(fuzzer, examples * args.scale, args.seed)
            print(f"{name}: {observed.requests - before} requests", file=sys.stderr)
    finally:
        fuzzer.close()
        app.extensions["cds_store"].dispose()
    print(f"seed {args.seed}, scale {args.scale}, {time.perf_counter() - started:.0f} s")
    print(observed.report())
    return 1 if observed.failures else 0


if __name__ == "__main__":
    sys.exit(main())
