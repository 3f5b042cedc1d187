"""Device, Condition and Procedure → the patient's implanted devices, as coded items.

A record shows an implanted device in three ways, and each is read (bindings/devices.json):

- a Device: its ``type`` codings, with ``status`` active (counts), inactive (explanted:
  evidence against), unknown (unconfirmed); entered-in-error is ignored;
- a Condition: a "presence of" status code (ICD-10-CM Z95.0, Z95.81x, Z96.2x, Z96.41,
  Z96.82) or a SNOMED CT finding (441509002 Cardiac pacemaker in situ), with the
  condition's status (``conditions.condition_status``);
- a Procedure: the implantation (CPT, SNOMED CT), completed (active), in progress,
  stopped or of unknown status (unconfirmed); not-done and entered-in-error are ignored.

Every coding is kept; the policy's value sets say which codes are programmable devices
and which are implanted devices of unclear programmability. Beside the codes the device
kind (pacemaker, defibrillator, neurostimulator, cochlear implant, programmable infusion
pump, ...) is read from the resource's words, coded in the service's device-kind code
system: a Condition's words count only when they say the device is present, a
Procedure's only when they say it implanted one (not removed it). Only implanted devices
count: words that say external, wearable or AED, and nothing that says implanted, leave
the resource out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from coverage_policy.model import CodedItem, Evidence
from fhir_mappings.conditions import condition_status
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import Entry, PatientRecord, binding, codings, concept_text

_DEVICE_STATUS = {"active": "active", "inactive": "inactive", "unknown": "unconfirmed"}
_PROCEDURE_STATUS = {
    "completed": "active",
    "in-progress": "unconfirmed",
    "stopped": "unconfirmed",
    "on-hold": "unconfirmed",
    "preparation": "unconfirmed",
    "unknown": "unconfirmed",
}


def _device_names(device: object) -> str:
    names = [concept_text(getattr(device, "type", None))]
    for name in getattr(device, "deviceName", None) or []:
        names.append(name.name or "")
    unique = dict.fromkeys(n.lower() for n in names if n)
    return " | ".join(unique)


def _says(words: Iterable[str], text: str) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in words)


def _is_external_text(text: str) -> bool:
    devices = binding("devices")
    return _says(devices["external_words"], text) and not _says(devices["implant_words"], text)


def is_external(device: object) -> bool:
    """Whether the Device is clearly external (worn or outside the body), not implanted."""
    displays = [display or "" for _, _, display in codings(getattr(device, "type", None))]
    return _is_external_text(" | ".join([_device_names(device), *displays]).lower())


def _kinds(text: str) -> list[str]:
    return sorted({kind for word, kind in binding("devices")["words"].items() if word in text})


def _names(concept: Any) -> str:
    """The concept's text and displays, each once, lower case."""
    return " | ".join(dict.fromkeys(n.lower() for n in concept_text(concept).split(" | ") if n))


def _items(
    entry: Entry, concept: Any, kinds: list[str], status: str, evidence: Evidence
) -> list[CodedItem]:
    """The concept's codings and the device kinds, all with the resource's one evidence."""
    items = [
        CodedItem(system, code, display, status, evidence)
        for system, code, display in codings(concept)
    ]
    kind_system = binding("devices")["kind_system"]
    items += [CodedItem(kind_system, kind, kind, status, evidence) for kind in kinds]
    return items


def _summary(described: str, concept: Any, kinds: list[str], status: str) -> str:
    name = getattr(concept, "text", None) or next(
        (display for _, _, display in codings(concept) if display), ""
    )
    codes = ", ".join(code for _, code, _ in codings(concept))
    read = evidence_summary("device", "read_as", kinds=", ".join(kinds)) if kinds else ""
    shown = (
        evidence_summary("device", "shown_with_codes", name=name, codes=codes)
        if codes
        else evidence_summary("device", "shown_by_name", name=name)
    )
    return evidence_summary(
        "device", "summary", described=described, shown=shown, read=read, status=status
    )


def facts_from_device(entry: Entry) -> list[CodedItem]:
    device = entry.resource
    status = _DEVICE_STATUS.get(device.status or "active")
    if status is None or is_external(device):  # entered-in-error, or not implanted
        return []
    kinds = _kinds(_device_names(device))
    concept = device.type
    if not getattr(concept, "text", None) and not codings(concept):
        names = [n.name for n in getattr(device, "deviceName", None) or [] if n.name]
        summary = evidence_summary(
            "device", "named_only", names=" | ".join(names), kinds=", ".join(kinds), status=status
        )
    else:
        described = evidence_summary("device", "device")
        summary = _summary(described, concept, kinds, device.status or "not stated")
    return _items(entry, concept, kinds, status, Evidence(entry.reference, summary))


def device_items_from_condition(entry: Entry) -> list[CodedItem]:
    """A Condition's codes, and the device kind its words name when they say it is present."""
    condition = entry.resource
    status = condition_status(condition)
    text = _names(condition.code)
    presence = binding("devices")["condition_presence_words"]
    present = _says(presence, text) and not _is_external_text(text)
    kinds = _kinds(text) if present else []
    described = evidence_summary("device", "condition")
    evidence = Evidence(entry.reference, _summary(described, condition.code, kinds, status))
    return _items(entry, condition.code, kinds, status, evidence)


def device_items_from_procedure(entry: Entry) -> list[CodedItem]:
    """A Procedure's codes, and the device kind its words name when it implanted one."""
    procedure = entry.resource
    status = _PROCEDURE_STATUS.get(procedure.status or "unknown")
    if status is None:  # not-done, entered-in-error
        return []
    performed = as_date(
        procedure.performedDateTime or getattr(procedure.performedPeriod, "start", None)
    )
    described = (
        evidence_summary("device", "procedure_on", date=performed.isoformat())
        if performed
        else evidence_summary("device", "procedure")
    )
    text = _names(procedure.code)
    devices = binding("devices")
    implanted = _says(devices["procedure_implant_words"], text)
    removed = _says(devices["procedure_removal_words"], text)
    kinds = _kinds(text) if implanted and not removed and not _is_external_text(text) else []
    summary = _summary(described, procedure.code, kinds, procedure.status or "not stated")
    return _items(entry, procedure.code, kinds, status, Evidence(entry.reference, summary))


def implanted_devices(record: PatientRecord) -> tuple[CodedItem, ...]:
    """Every implanted-device item the record's Devices, Conditions and Procedures give."""
    items: list[CodedItem] = []
    for entry in record.of_type("Device"):
        items += facts_from_device(entry)
    for entry in record.of_type("Condition"):
        items += device_items_from_condition(entry)
    for entry in record.of_type("Procedure"):
        items += device_items_from_procedure(entry)
    return tuple(items)
