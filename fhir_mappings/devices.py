"""Device → the patient's implanted devices, as coded items with a status.

Each Device gives its ``type`` codings, plus the device kind (pacemaker, defibrillator,
neurostimulator, programmable infusion pump) read from its type text or display, coded
in the service's device-kind code system (bindings/devices.json). Status ``active``
counts; ``inactive`` (explanted) is evidence against; ``entered-in-error`` is ignored.
"""

from __future__ import annotations

from coverage_policy.model import CodedItem, Evidence
from fhir_mappings.record import Entry, binding, codings, concept_text

_STATUS = {"active": "active", "inactive": "inactive", "unknown": "unconfirmed"}


def _device_names(device: object) -> str:
    names = [concept_text(getattr(device, "type", None))]
    for name in getattr(device, "deviceName", None) or []:
        names.append(name.name or "")
    unique = dict.fromkeys(n.lower() for n in names if n)
    return " | ".join(unique)


def facts_from_device(entry: Entry) -> list[CodedItem]:
    device = entry.resource
    status = _STATUS.get(device.status or "active")
    if status is None:  # entered-in-error
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
