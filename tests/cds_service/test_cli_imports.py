"""The command line loads the service only for the commands that need it."""

from __future__ import annotations

import gc
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from cds_service import cli


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_help_does_not_import_the_service() -> None:
    loaded = _modules_after(
        "from cds_service.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "cds_service.cli" in loaded
    assert not {"cds_service.app", "flask", "sqlalchemy", "fhir.resources.R4B"} & loaded


def test_create_app_is_still_importable_from_the_package() -> None:
    from cds_service import create_app
    from cds_service.app import create_app as defined

    assert create_app is defined


def test_preload_loads_every_model_a_draft_order_can_need() -> None:
    """After ``preload`` (what ``serve`` runs before forking), validating a draft order
    with many element types imports no further model module."""
    loaded = _modules_after(
        "from cds_service.app import preload\n"
        "preload()\n"
        "import sys\n"
        "before = set(sys.modules)\n"
        "from fhir_mappings.r4 import parse_resource\n"
        "parse_resource({'resourceType': 'MedicationRequest', 'status': 'draft',"
        " 'intent': 'order', 'subject': {'reference': 'Patient/p'},"
        " 'medicationCodeableConcept': {'text': 'insulin'},"
        " 'note': [{'text': 'x'}], 'dosageInstruction': [{'text': 'by pump',"
        " 'timing': {'repeat': {'frequency': 1, 'period': 1, 'periodUnit': 'd'}},"
        " 'doseAndRate': [{'doseQuantity': {'value': 1}}]}],"
        " 'dispenseRequest': {'quantity': {'value': 1}}}, 'x')\n"
        "new = {m for m in set(sys.modules) - before if m.startswith('fhir')}\n"
        "assert not new, new\n"
        "sys.modules['__new__'] = sys  # marker: the check ran\n"
    )
    assert "__new__" in loaded


def test_the_command_exits_with_mains_code_leaving_its_objects_untraced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installed command runs ``main`` and then freezes the collector, so the
    process's last collections do not trace everything it built on the way out."""
    (command,) = (e for e in entry_points(group="console_scripts") if e.name == "infusion-pump-cds")
    assert command.value == "cds_service.cli:run_command"
    monkeypatch.setattr(cli, "main", lambda argv=None: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run_command()
        assert exited.value.code == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
