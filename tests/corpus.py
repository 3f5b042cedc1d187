"""Decide every pump order of ``PUMP_ORDERS`` for every Synthea record in
``../shared/synthea-r4/``, and compare the outcomes with ``tests/corpus_summary.tsv``.

Regenerate the summary (after a deliberate change of policy or mappings), from the
repository root:

    .venv/bin/python -m tests.corpus --write

Without ``--write`` it prints the differences and exits 1 when there are any. Either way
it prints the totals per outcome. The output is deterministic: records in file-name
order, orders in ``PUMP_ORDERS`` order, a fixed clock and fixed hookInstance uuids.

Each record (a Synthea ``transaction`` Bundle) becomes the prefetch an EHR would send
for the templates of ``hooks.service.PATIENT_PREFETCH``: the Patient, then searchset
Bundles of its Conditions, MedicationRequests, Observations (only the LOINC codes the
template asks for), AllergyIntolerances, Devices, Encounters (the 100 most recent, as
``_sort=-date&_count=100`` returns them), Procedures and QuestionnaireResponses, with
their ``urn:uuid:`` full URLs and references as Synthea wrote them, and a Coverage
Bundle with one active Coverage synthesized for the patient. The prefetch is built and
serialized once per record and reused for every order.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from cds_service.audit import audit_for_assertion
from cds_service.store import Store
from hooks.coverage_information import EXTENSION_URL
from hooks.service import PATIENT_PREFETCH
from tests.builders import (
    PUMP_ORDERS,
    PumpOrder,
    coverage,
    order_sign_request,
    pump_order_resources,
    searchset,
    searchset_of_entries,
)
from tests.conftest import ORDER_SIGN, SHARED, make_app
from tests.response_validation import validate_cds_response

SYNTHEA = SHARED / "synthea-r4"
SUMMARY = Path(__file__).resolve().parent / "corpus_summary.tsv"
COLUMNS = ("patient", "order", "rule", "outcome")
_PREFETCH_TYPES = {
    "conditions": "Condition",
    "medicationRequests": "MedicationRequest",
    "observations": "Observation",
    "allergies": "AllergyIntolerance",
    "devices": "Device",
    "encounters": "Encounter",
    "procedures": "Procedure",
    "questionnaireResponses": "QuestionnaireResponse",
}
# The coverage card names each deciding rule: "**Title** (RULE-ID): message", the
# indication first, then "**Also required: Title** (RULE-ID): ..." per requirement.
_HOOK_INSTANCES = uuid.UUID("6f1c2d9e-3b4a-4c5d-8e7f-0a1b2c3d4e5f")


@dataclass(frozen=True, slots=True)
class SummaryRow:
    patient: str  # the record's file name
    order: str  # PumpOrder.label
    rule: str  # the indication rule id, then "+" each requirement rule; "-" for no decision
    outcome: str  # the CRD covered code; "deceased" or "none" when no decision was made

    def cells(self) -> tuple[str, str, str, str]:
        return (self.patient, self.order, self.rule, self.outcome)


def synthea_records(folder: Path = SYNTHEA) -> list[Path]:
    """The Synthea record files, in file-name order."""
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def _template_loinc_codes() -> frozenset[str]:
    query = PATIENT_PREFETCH["observations"].split("code=", 1)[1]
    return frozenset(part.split("|", 1)[1] for part in query.split(",") if "|" in part)


def _has_template_code(observation: Mapping[str, Any], codes: frozenset[str]) -> bool:
    return any(
        c.get("system") == "http://loinc.org" and c.get("code") in codes
        for c in (observation.get("code") or {}).get("coding") or []
    )


def record_prefetch(bundle: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(patient id, prefetch) for a Synthea transaction Bundle."""
    by_type: dict[str, list[tuple[str | None, dict[str, Any]]]] = {}
    for entry in bundle.get("entry") or []:
        resource = entry["resource"]
        by_type.setdefault(resource["resourceType"], []).append((entry.get("fullUrl"), resource))
    patient = by_type["Patient"][0][1]
    codes = _template_loinc_codes()
    by_type["Observation"] = [
        pair for pair in by_type.get("Observation", []) if _has_template_code(pair[1], codes)
    ]
    by_type["Encounter"] = sorted(
        by_type.get("Encounter", []),
        key=lambda pair: (pair[1].get("period") or {}).get("start", ""),
        reverse=True,
    )[:100]
    prefetch: dict[str, Any] = {
        "patient": patient,
        "coverage": searchset(coverage(patient["id"])),
    }
    for key, resource_type in _PREFETCH_TYPES.items():
        prefetch[key] = searchset_of_entries(by_type.get(resource_type, []))
    missing = set(PATIENT_PREFETCH) - set(prefetch)
    if missing:
        raise KeyError(f"prefetch keys not built: {sorted(missing)}")
    return patient["id"], prefetch


def _hook_instance(patient_file: str, order: PumpOrder) -> str:
    return str(uuid.uuid5(_HOOK_INSTANCES, f"{patient_file}/{order.label}"))


def _coverage_part(action: Mapping[str, Any], name: str) -> str | None:
    for extension in action.get("resource", {}).get("extension", []):
        if extension.get("url") == EXTENSION_URL:
            for part in extension["extension"]:
                if part["url"] == name:
                    return str(part.get("valueCode") or part.get("valueString"))
    return None


def _covered(action: Mapping[str, Any]) -> str | None:
    return _coverage_part(action, "covered")


def _deciding_rules(store: Store, assertion_id: str, orders: set[str]) -> str:
    """The indication and requirement rules the audit trail recorded for the decision."""
    for item in audit_for_assertion(store, assertion_id):
        if set(item["orders"]) == orders:
            kinds = ("indication", "requirement")
            rules = [c["rule_id"] for c in item["criteria"] if c["rule_kind"] in kinds]
            return "+".join(dict.fromkeys(rules))
    return "-"


def _cards_about(response: Mapping[str, Any], reference: str) -> Iterator[Mapping[str, Any]]:
    for card in response.get("cards", []):
        associated = (card.get("extension") or {}).get("davinci-crd.associated-resource", [])
        if any(a.get("reference") == reference for a in associated):
            yield card


def summarize_response(
    patient_file: str,
    order: PumpOrder,
    device: Mapping[str, Any],
    medication: Mapping[str, Any],
    response: Mapping[str, Any],
    store: Store,
) -> SummaryRow:
    """The rule and outcome the response gives the pump order (and its drug order), the
    rules as the audit trail recorded them."""
    outcomes = []
    assertion_ids = []
    for resource in (device, medication):
        for action in response.get("systemActions", []):
            target = action.get("resource", {})
            if (target.get("resourceType"), target.get("id")) == (
                resource["resourceType"],
                resource["id"],
            ):
                outcomes.append(_covered(action) or "none")
                assertion_ids.append(_coverage_part(action, "coverage-assertion-id"))
    device_reference = f"DeviceRequest/{device['id']}"
    orders = {device_reference, f"MedicationRequest/{medication['id']}"}
    rule = next((_deciding_rules(store, a, orders) for a in assertion_ids if a), "-")
    deceased = any(
        "deceased" in card.get("summary", "") for card in _cards_about(response, device_reference)
    )
    outcome = "|".join(dict.fromkeys(outcomes)) or ("deceased" if deceased else "none")
    return SummaryRow(patient_file, order.label, rule, outcome)


def decide_record(client: FlaskClient, path: Path) -> list[SummaryRow]:
    """Send one order-sign request per pump order for the record at ``path``."""
    patient_id, prefetch = record_prefetch(json.loads(path.read_text(encoding="utf-8")))
    # Serialize the record's prefetch once; only the draft orders change per request.
    prefetch_json = json.dumps(prefetch)
    rows = []
    for order in PUMP_ORDERS:
        device, medication = pump_order_resources(order, patient_id)
        hook_instance = _hook_instance(path.name, order)
        body = order_sign_request(patient_id, (device, medication), {}, hook_instance)
        del body["prefetch"]
        text = json.dumps(body)[:-1] + f', "prefetch": {prefetch_json}}}'
        response = client.post(ORDER_SIGN, data=text, content_type="application/json")
        if response.status_code != 200:
            answer = response.get_data(as_text=True)[:500]
            raise RuntimeError(f"{path.name} {order.label}: HTTP {response.status_code} {answer}")
        answer = response.get_json()
        validate_cds_response(answer)
        store = client.application.extensions["cds_store"]
        rows.append(summarize_response(path.name, order, device, medication, answer, store))
    return rows


def decide_corpus(folder: Path = SYNTHEA) -> list[SummaryRow]:
    """Every record × every pump order, through the service's HTTP surface."""
    client = make_app().test_client()
    return [row for path in synthea_records(folder) for row in decide_record(client, path)]


def render_summary(rows: Sequence[SummaryRow]) -> str:
    """The summary as TSV, header first, one line per record and order."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(row.cells() for row in rows)
    return out.getvalue()


def totals(rows: Sequence[SummaryRow]) -> str:
    """Count per outcome, e.g. ``conditional: 120, not-covered: 40 (390 orders)``."""
    counts = Counter(row.outcome for row in rows)
    shown = ", ".join(f"{outcome}: {counts[outcome]}" for outcome in sorted(counts))
    return f"{shown} ({len(rows)} orders)"


def summary_diff(expected: str, actual: str) -> str:
    """A unified diff of the committed summary against the outcomes now."""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile="tests/corpus_summary.tsv (committed)",
            tofile="outcomes now",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite {SUMMARY.name}")
    args = parser.parse_args(argv)
    if not SYNTHEA.is_dir():
        print(f"{SYNTHEA} is not present", file=sys.stderr)
        return 2
    rows = decide_corpus()
    actual = render_summary(rows)
    print(f"totals: {totals(rows)}")
    if args.write:
        SUMMARY.write_text(actual, encoding="utf-8")
        print(f"wrote {SUMMARY}")
        return 0
    expected = SUMMARY.read_text(encoding="utf-8") if SUMMARY.exists() else ""
    diff = summary_diff(expected, actual)
    if diff:
        print(diff, end="")
        return 1
    print(f"{SUMMARY.name} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
