"""Loading FHIR data into a FHIR server: ``infusion-pump-cds fhir load PATH --fhir-server URL``.

PATH is a file or a folder of them: JSON Bundles (Synthea's ``transaction`` Bundles, or
any ``batch``/``collection``/``searchset`` Bundle), single resources, or NDJSON (one
resource per line, as a Bulk Data export writes them, ``.ndjson``).

Every resource is written with ``PUT Type/id``, so ids stay what the data says and
loading the same data twice updates rather than duplicates. A resource a Bundle names
only by a ``urn:uuid:`` full URL gets that uuid as its id; one with neither an id nor a
usable full URL is created with ``POST`` (the server picks its id). References to a
Bundle entry's full URL (``urn:uuid:...``, or an absolute URL) are rewritten to
``Type/id`` before anything is sent, so the data needs no transaction processing on the
server and works the same on any FHIR R4 server. Resources go in ``batch`` Bundles of
``BATCH_SIZE`` entries; a progress bar on standard error shows how far it is.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from fhir_mappings.codes import LOINC
from fhir_mappings.labs import lab_loinc_codes
from hooks.service import PATIENT_PREFETCH

BATCH_SIZE = 200
TIMEOUT_S = 120.0
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_UUID_URN = re.compile(r"^urn:uuid:([0-9a-fA-F-]{36})$")


class LoadFailed(Exception):
    """The data cannot be read or the server cannot be used (the message says which)."""


@dataclass
class LoadResult:
    """What a load wrote: resources per type, the Patients' references, entries refused."""

    files: int = 0
    written: Counter[str] = field(default_factory=Counter)
    patients: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.written.values())


def data_files(path: Path) -> list[Path]:
    """The files to load: PATH itself, or the ``.json``/``.ndjson`` files under a folder."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".ndjson")
        )
    raise LoadFailed(f"{path}: no such file or folder")


def read_resources(path: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """(full URL, resource) pairs of one file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadFailed(f"{path}: cannot be read ({type(exc).__name__})") from exc
    pairs: list[tuple[str | None, dict[str, Any]]] = []
    if path.suffix == ".ndjson":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                pairs.append((None, _resource(_json(line, f"{path}:{number}"), f"{path}:{number}")))
        return pairs
    value = _resource(_json(text, str(path)), str(path))
    if value["resourceType"] != "Bundle":
        return [(None, value)]
    for index, entry in enumerate(value.get("entry") or []):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise LoadFailed(f"{where} is not an object")
        full_url = entry.get("fullUrl")
        pairs.append(
            (
                full_url if isinstance(full_url, str) else None,
                _resource(entry.get("resource"), where),
            )
        )
    return pairs


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadFailed(f"{where}: not JSON ({exc.msg}, line {exc.lineno})") from exc


def _resource(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise LoadFailed(f"{where}: not a FHIR resource (no resourceType)")
    return value


def assign_ids(pairs: list[tuple[str | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The resources with ids, and references to full URLs rewritten to ``Type/id``."""
    targets: dict[str, str] = {}
    resources = []
    for full_url, original in pairs:
        resource = dict(original)
        match = _UUID_URN.match(full_url or "")
        if not (isinstance(resource.get("id"), str) and _FHIR_ID.match(resource["id"])):
            resource.pop("id", None)
            if match is not None:
                resource["id"] = match.group(1).lower()
        if full_url and resource.get("id"):
            targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append(resource)
    return [_rewrite(resource, targets) for resource in resources]


def _rewrite(value: Any, targets: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        rewritten = {key: _rewrite(item, targets) for key, item in value.items()}
        reference = value.get("reference")
        if isinstance(reference, str) and reference in targets:
            rewritten["reference"] = targets[reference]
        return rewritten
    if isinstance(value, list):
        return [_rewrite(item, targets) for item in value]
    return value


def service_reads(resource: Mapping[str, Any]) -> bool:
    """Whether the service's prefetch templates would ever return this resource: one of
    their types, and for Observations one of the codes they ask for (a record holds
    hundreds of other Observations; in-memory servers search faster without them)."""
    types = {template.split("?")[0].split("/")[0] for template in PATIENT_PREFETCH.values()}
    kind = resource.get("resourceType")
    if kind not in types | {"Medication"}:
        return False
    if kind != "Observation":
        return True
    wanted = {(LOINC, code) for code in lab_loinc_codes()}  # those the template asks for
    return any(
        (coding.get("system"), coding.get("code")) in wanted
        for coding in (resource.get("code") or {}).get("coding") or []
        if isinstance(coding, dict)
    )


class ProgressBar:
    """``[#####-----] 120/400 resources`` on a terminal; nothing on a pipe or file."""

    def __init__(
        self, total: int, stream: IO[str] | None = None, width: int = 30, unit: str = "resources"
    ) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.unit = unit
        self.shown = self.stream.isatty()

    def update(self, done: int) -> None:
        if not self.shown:
            return
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {self.unit}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _batches(resources: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(resources), size):
        yield resources[start : start + size]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    if resource.get("id"):
        request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    else:
        request = {"method": "POST", "url": resource["resourceType"]}
    return {"resource": resource, "request": request}


def load_resources(
    resources: list[dict[str, Any]],
    base_url: str,
    *,
    token: str | None = None,
    session: requests.Session | None = None,
    progress: Callable[[int], None] = lambda done: None,
    batch_size: int = BATCH_SIZE,
    result: LoadResult | None = None,
) -> LoadResult:
    """Write the resources to the server at ``base_url`` in batch Bundles."""
    result = result or LoadResult()
    http = session or requests.Session()
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    done = 0
    for batch in _batches(resources, batch_size):
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [_entry(r) for r in batch],
        }
        try:
            response = http.post(
                base_url.rstrip("/"), json=bundle, headers=headers, timeout=TIMEOUT_S
            )
        except requests.RequestException as exc:
            raise LoadFailed(
                f"cannot reach the FHIR server {base_url} ({type(exc).__name__})"
            ) from exc
        if response.status_code in (401, 403):
            raise LoadFailed(
                f"the FHIR server {base_url} refused access (HTTP {response.status_code});"
                " pass --token"
            )
        if response.status_code != 200:
            raise LoadFailed(
                f"the FHIR server {base_url} answered HTTP {response.status_code} to a batch"
            )
        try:
            answers = response.json().get("entry") or []
        except (ValueError, AttributeError) as exc:
            raise LoadFailed(f"the FHIR server {base_url} did not answer with a Bundle") from exc
        for resource, answer in zip(batch, answers, strict=False):
            status = str((answer.get("response") or {}).get("status", ""))
            location = str((answer.get("response") or {}).get("location") or "")
            if status[:1] == "2":
                result.written[resource["resourceType"]] += 1
                if resource["resourceType"] == "Patient":
                    reference = "/".join(location.split("/")[:2]) if location else ""
                    result.patients.append(reference or f"Patient/{resource.get('id')}")
            else:
                result.refused.append(
                    f"{resource['resourceType']}/{resource.get('id', '(new)')}: "
                    f"HTTP {status or '?'}"
                )
        done += len(batch)
        progress(done)
    return result


def load_path(
    path: Path,
    base_url: str,
    *,
    token: str | None = None,
    keep: Callable[[Mapping[str, Any]], bool] = lambda resource: True,
    progress_stream: IO[str] = sys.stderr,
    session: requests.Session | None = None,
) -> LoadResult:
    """Read everything under ``path`` that ``keep`` accepts, then load it."""
    files = data_files(path)
    if not files:
        raise LoadFailed(f"{path}: no .json or .ndjson files")
    per_file = [[r for r in assign_ids(read_resources(f)) if keep(r)] for f in files]
    total = sum(map(len, per_file))
    bar = ProgressBar(total, progress_stream)
    result = LoadResult(files=len(files))
    loaded = 0
    try:
        for resources in per_file:
            before = loaded

            def show(done: int, offset: int = before) -> None:
                bar.update(offset + done)

            load_resources(
                resources, base_url, token=token, session=session, progress=show, result=result
            )
            loaded += len(resources)
    finally:
        bar.close()
    return result


def summary(result: LoadResult, base_url: str) -> Iterable[str]:
    """Lines saying what was loaded."""
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(result.written.items()))
    yield (
        f"loaded {result.total} resources from {result.files} file(s) into {base_url}: "
        f"{kinds or 'none'}"
    )
    if result.refused:
        yield f"{len(result.refused)} refused by the server, e.g.: " + "; ".join(result.refused[:3])
