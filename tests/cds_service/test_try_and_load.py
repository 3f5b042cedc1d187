"""``infusion-pump-cds fhir load`` and ``try`` against the real FHIR server the tests start
(Medplum's router, ``demo/fhir_server``): Synthea records loaded with ``fhir load`` and
decided by ``try`` exactly as the corpus test decides them (``tests/corpus_summary.tsv``).
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service import try_as_ehr
from cds_service.cli import main
from cds_service.fhir_load import ProgressBar, assign_ids, service_reads
from cds_service.try_as_ehr import ROUTES, OrderSpec, TryFailed, draft_orders, find_drug
from tests.builders import PUMP_ORDERS, PumpOrder, coverage
from tests.conftest import FIXED_NOW, SHARED
from tests.corpus import SUMMARY, summarize_response
from tests.medplum_server import MedplumServer, start_medplum
from tests.served_process import ServedProcess

TOKEN = "try-and-load-token-8d2e"
RECORDS = (
    "colon-cancer__Darin_Skiles__31c343e9.json",  # not-covered for morphine and fluorouracil
    "heparin-morphine__Jordan_Cruickshank__5de38439.json",
    "chronic-pain-cancer__Barrett_Douglas__d21c38f7.json",  # deceased: no decision
)
ROUTE_NAMES = {code: name for name, (code, _) in ROUTES.items()}


@pytest.fixture(scope="module")
def medplum() -> Iterator[MedplumServer]:
    server = start_medplum(TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(medplum: MedplumServer) -> dict[str, str]:
    """The Synthea records, loaded with ``fhir load``, each with an active Coverage: their
    patient ids by file name."""
    if not (SHARED / "synthea-r4").is_dir():
        pytest.skip("../shared/synthea-r4 (Synthea records) is not present")
    patients = {}
    for name in RECORDS:
        path = SHARED / "synthea-r4" / name
        command = ["fhir", "load", str(path), "--fhir-server", medplum.base, "--token", TOKEN]
        assert main([*command, "--service-data-only"]) == 0
        bundle = json.loads(path.read_text(encoding="utf-8"))
        patient_id = next(
            e["resource"]["id"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
        )
        medplum.post("Coverage", {**coverage(patient_id), "id": None})
        patients[name] = patient_id
    return patients


def _corpus_rows() -> dict[tuple[str, str], tuple[str, str]]:
    rows = {}
    for line in SUMMARY.read_text(encoding="utf-8").splitlines()[1:]:
        patient, order, rule, outcome = line.split("\t")
        rows[(patient, order)] = (rule, outcome)
    return rows


def _try_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["try", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _order_args(order: PumpOrder) -> list[str]:
    return ["--order", order.hcpcs, "--drug", order.drug, "--route", ROUTE_NAMES[order.route[0]]]


@pytest.mark.parametrize("record", RECORDS)
def test_try_decides_a_loaded_record_as_the_corpus_does(
    medplum: MedplumServer,
    loaded: dict[str, str],
    record: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The corpus names the deciding rules as the audit trail recorded them: keep the
    # in-process service's (throwaway) audit trail open until it is read.
    kept: list[Any] = []
    monkeypatch.setattr(try_as_ehr._InProcess, "close", lambda self: kept.append(self))
    expected = _corpus_rows()
    as_of = FIXED_NOW.date().isoformat()
    for order in PUMP_ORDERS:
        response = _try_json(
            capsys,
            "--fhir-server",
            medplum.base,
            "--token",
            TOKEN,
            "--patient",
            loaded[record],
            "--as-of",
            as_of,
            *_order_args(order),
        )
        device = {"resourceType": "DeviceRequest", "id": "pump-1"}
        medication = {"resourceType": "MedicationRequest", "id": "drug-1"}
        store = kept[-1].app.extensions["cds_store"]
        row = summarize_response(record, order, device, medication, response, store)
        store.dispose()
        assert (row.rule, row.outcome) == expected[(record, order.label)], order.label


def test_try_prints_the_decision_and_the_cards(
    medplum: MedplumServer, loaded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    patient = loaded[RECORDS[0]]
    args = ["try", "--fhir-server", medplum.base, "--token", TOKEN, "--patient", patient]
    assert main([*args, "--order", "E0781", "--drug", "vancomycin", "--as-of", "2026-11-28"]) == 0
    out = capsys.readouterr().out
    assert f"order-sign for Patient/{patient} on {medplum.base} (service: in-process)" in out
    assert "prefetch: 10 keys filled from the FHIR server" in out
    assert "DeviceRequest/pump-1 (" in out
    assert "): NOT-COVERED" in out
    assert "coverage-assertion-id: " in out
    assert "suggestion: " in out  # the covered alternatives
    assert "link: MCS051.01" in out


def test_without_prefetch_the_service_fetches_and_decides_the_same(
    medplum: MedplumServer, loaded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--fhir-server", medplum.base, "--token", TOKEN, "--patient", loaded[RECORDS[1]]]
    args += ["--order", "E0784", "--drug", "insulin", "--as-of", "2026-11-28"]
    before = len(medplum.requests_seen())
    sent = _try_json(capsys, *args)
    fetched = _try_json(capsys, *args, "--no-prefetch")
    seen = medplum.requests_seen()[before:]
    assert all(request["authorized"] for request in seen)

    def outcome(response: dict[str, Any]) -> list[Any]:
        return [
            [p for p in e["extension"] if p["url"] in ("covered", "doc-needed", "reason")]
            for a in response["systemActions"]
            for e in a["resource"]["extension"]
        ]

    assert outcome(sent) == outcome(fetched)


def test_several_orders_at_once(
    medplum: MedplumServer, loaded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    response = _try_json(
        capsys,
        *("--fhir-server", medplum.base, "--token", TOKEN, "--patient", loaded[RECORDS[1]]),
        *("--order", "E0784", "--drug", "insulin"),
        *("--order", "E0781", "--drug", "vancomycin", "--crd-version", "2.2"),
    )
    updated = sorted(a["resource"]["id"] for a in response["systemActions"])
    assert updated == ["drug-1", "drug-2", "pump-1", "pump-2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--order", "E0784", "--drug", "insuline"], "unknown drug 'insuline'"),
        (["--order", "pump"], "is not a HCPCS code"),
        (["--order", "E0784", "--drug", "insulin", "--route", "oral"], "unknown route 'oral'"),
        ([], "nothing to sign"),
        (["--order", "E0784", "--crd-version", "2.2", "--patient", "no/such"], "not a FHIR id"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    medplum: MedplumServer, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["try", "--fhir-server", medplum.base, "--token", TOKEN, "--patient", "p1", *args]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.splitlines()) == 1


def test_unreachable_server_missing_patient_wrong_token(
    medplum: MedplumServer, loaded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/fhir"
    cases = [
        (closed, TOKEN, "p1", "cannot reach the FHIR server"),
        (medplum.base, TOKEN, "no-such-patient", "patient no-such-patient is not on the FHIR"),
        (medplum.base, "wrong", loaded[RECORDS[0]], "refused access (HTTP 401); pass --token"),
    ]
    for base, token, patient, message in cases:
        args = ["try", "--fhir-server", base, "--token", token, "--patient", patient]
        assert main([*args, "--order", "E0784", "--drug", "insulin"]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.splitlines()) == 1


def test_try_a_running_service(
    medplum: MedplumServer,
    loaded: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--service URL``: the same request over HTTP to ``infusion-pump-cds serve``."""
    env = {
        "CDS_AUTH": "optional",
        "CDS_FHIR_SERVERS": "http://127.0.0.1",
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
    }
    served = ServedProcess(env).start()
    base = served.base
    try:
        args = ["--fhir-server", medplum.base, "--token", TOKEN, "--patient", loaded[RECORDS[0]]]
        response = _try_json(
            capsys, *args, "--order", "E0781", "--drug", "vancomycin", "--service", base
        )
        covered = {
            p["valueCode"]
            for a in response["systemActions"]
            for e in a["resource"]["extension"]
            for p in e["extension"]
            if p["url"] == "covered"
        }
        assert covered == {"not-covered"}
        assert (
            main(["try", *args, "--order", "E0784", "--service", base, "--as-of", "2026-01-01"])
            == 2
        )
        assert "not with --service" in capsys.readouterr().err
    finally:
        served.stop()
    assert main(["try", *args, "--order", "E0784", "--service", base]) == 2
    assert "cannot reach the service" in capsys.readouterr().err


# -- fhir load ---------------------------------------------------------------------------


def test_load_resolves_urn_uuid_references_and_is_idempotent(
    medplum: MedplumServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patient_urn = "urn:uuid:0b8f5a3e-6a0e-4c47-9a77-2f4d8f1b9c01"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": {"resourceType": "Patient", "gender": "female"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:6c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e",
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": patient_urn},
                    "code": {"text": "Diabetes"},
                },
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    command = ["fhir", "load", str(path), "--fhir-server", medplum.base, "--token", TOKEN]
    for _ in range(2):
        assert main(command) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"loaded 2 resources from 1 file(s) into {medplum.base}")
    patient_id = patient_urn.removeprefix("urn:uuid:")
    conditions = medplum.get(f"Condition?subject=Patient/{patient_id}")
    assert conditions["total"] == 1  # loaded twice, written once
    assert conditions["entry"][0]["resource"]["subject"] == {"reference": f"Patient/{patient_id}"}


def test_load_ndjson_folder(
    medplum: MedplumServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    patients = [{"resourceType": "Patient", "id": f"bulk-{n}", "gender": "male"} for n in range(3)]
    (folder / "Patient.ndjson").write_text(
        "\n".join(json.dumps(p) for p in patients) + "\n", encoding="utf-8"
    )
    observation = {
        "resourceType": "Observation",
        "id": "bulk-obs",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/bulk-1"},
    }
    (folder / "Observation.ndjson").write_text(json.dumps(observation) + "\n", encoding="utf-8")
    command = ["fhir", "load", str(folder), "--fhir-server", medplum.base, "--token", TOKEN]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "loaded 4 resources from 2 file(s)" in out
    assert "1 Observation, 3 Patient" in out
    assert medplum.get("Observation/bulk-obs")["subject"]["reference"] == "Patient/bulk-1"


def test_load_failures_are_one_line(
    medplum: MedplumServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "x1"}), encoding="utf-8")
    cases = [
        ([str(broken), "--fhir-server", medplum.base, "--token", TOKEN], "not JSON"),
        ([str(tmp_path / "missing"), "--fhir-server", medplum.base], "no such file or folder"),
        ([str(good), "--fhir-server", medplum.base, "--token", "wrong"], "pass --token"),
        ([str(good), "--fhir-server", "http://127.0.0.1:9/fhir"], "cannot reach the FHIR server"),
    ]
    for args, message in cases:
        assert main(["fhir", "load", *args]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.splitlines()) == 1


def test_assign_ids_keeps_ids_and_rewrites_full_urls() -> None:
    pairs = [
        ("https://ehr.example.org/fhir/Patient/p7", {"resourceType": "Patient", "id": "p7"}),
        (
            None,
            {
                "resourceType": "Encounter",
                "subject": {"reference": "https://ehr.example.org/fhir/Patient/p7"},
            },
        ),
    ]
    patient, encounter = assign_ids(pairs)
    assert patient["id"] == "p7"
    assert "id" not in encounter  # created by POST: the server names it
    assert encounter["subject"] == {"reference": "Patient/p7"}


def test_service_reads_only_what_the_prefetch_asks_for() -> None:
    hba1c = {"system": "http://loinc.org", "code": "4548-4"}
    assert service_reads({"resourceType": "Observation", "code": {"coding": [hba1c]}})
    heart_rate = {"system": "http://loinc.org", "code": "8867-4"}
    assert not service_reads({"resourceType": "Observation", "code": {"coding": [heart_rate]}})
    assert not service_reads({"resourceType": "Claim"})
    assert service_reads({"resourceType": "Condition"})


def test_progress_bar_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    bar = ProgressBar(4, shown, width=8)
    bar.update(2)
    bar.close()
    assert shown.getvalue() == "\r[####----] 2/4 resources\n"
    piped = io.StringIO()
    ProgressBar(4, piped).update(4)
    assert piped.getvalue() == ""


def test_draft_orders_and_drugs() -> None:
    assert find_drug("insulin").rxnorm is not None
    assert find_drug("Humalog").family == "insulin"
    with pytest.raises(TryFailed, match="unknown drug"):
        find_drug("aspirin")
    device, medication = draft_orders(
        [OrderSpec("E0783", "baclofen")], "p1", FIXED_NOW.date(), "Practitioner/x"
    )
    assert device["codeCodeableConcept"]["coding"][0]["code"] == "E0783"
    assert medication["category"][0]["coding"][0]["code"] == "outpatient"  # implanted pump
    route = medication["dosageInstruction"][0]["route"]["coding"][0]["code"]
    assert route == ROUTES["intrathecal"][0]  # baclofen's default route
