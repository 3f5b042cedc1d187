"""Device → the patient's implanted devices, as coded items with a status.

Each Device gives its ``type`` codings, plus the device kind (pacemaker, defibrillator,
neurostimulator, programmable infusion pump) read from its type text or display, coded
in the service's device-kind code system (bindings/devices.json). Status ``active``
counts; ``inactive`` (explanted) is evidence against; ``entered-in-error`` is ignored.
Only implanted devices count: one whose type, coding display or name says external,
wearable or AED (bindings/devices.json external_words), and nothing says implanted, is
left out.
"""

from __future__ import annotations

import re

from coverage_policy.model import CodedItem, Evidence
from fhir_mappings.record import Entry, binding, codings, concept_text

_STATUS = {"active": "active", "inactive": "inactive", "unknown": "unconfirmed"}


def _device_names(device: object) -> str:
    names = [concept_text(getattr(device, "type", None))]
    for name in getattr(device, "deviceName", None) or []:
        names.append(name.name or "")
    unique = dict.fromkeys(n.lower() for n in names if n)
    return " | ".join(unique)


def _says(words: list[str], text: str) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in words)


def is_external(device: object) -> bool:
    """Whether the Device is clearly external (worn or outside the body), not implanted."""
    displays = [display or "" for _, _, display in codings(getattr(device, "type", None))]
    text = " | ".join([_device_names(device), *displays]).lower()
    devices = binding("devices")
    return _says(devices["external_words"], text) and not _says(devices["implant_words"], text)


def facts_from_device(entry: Entry) -> list[CodedItem]:
    device = entry.resource
    status = _STATUS.get(device.status or "active")
    if status is None or is_external(device):  # entered-in-error, or not implanted
        return []
    items = []
    for system, code, display in codings(device.type):
        summary = f"device {display or code} ({code}), status {device.status or 'not stated'}"
        items.append(CodedItem(system, code, display, status, Evidence(entry.reference, summary)))
    devices = binding("devices")
    names = _device_names(device)
    kinds = {kind for word, kind in devices["words"].items() if word in names}
    for kind in sorted(kinds):
        summary = f"device named '{names}' ({kind}), status {device.status or 'not stated'}"
        evidence = Evidence(entry.reference, summary)
        items.append(CodedItem(devices["kind_system"], kind, kind, status, evidence))
    return items
