"""The policy's documentation items → the FHIR R4 documentation Questionnaire.

One source of truth: the items, their answer types and options come from the policy
data, so the Questionnaire a card links to, the canonical the CRD ``questionnaire``
sub-extension names, and the linkIds ``fhir_mappings.documentation`` reads back are the
same by construction. Pure: policy data in, FHIR JSON out.

- ``id`` = the policy's ``questionnaire.id``; ``url`` and ``version`` = its canonical;
- one item per documentation item, ``linkId`` = the item id, ``type`` = its answer type
  (boolean | choice | date), ``code`` = the item id in the documentation-item code
  system, a ``documentation-type`` extension saying who supplies it (clinical | admin, as
  CRD ``doc-needed`` does), and a help child item naming the criteria it can settle;
- choice items offer ``answerOption.valueCoding`` from a code system per item:
  ``<base>/CodeSystem/<item id>``, where ``<base>`` is the questionnaire url up to
  ``/Questionnaire/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from coverage_policy.model import DocumentationItem, Policy

ITEM_CONTROL = "http://hl7.org/fhir/StructureDefinition/questionnaire-itemControl"
ITEM_CONTROL_SYSTEM = "http://hl7.org/fhir/questionnaire-item-control"
US = {
    "coding": [
        {"system": "urn:iso:std:iso:3166", "code": "US", "display": "United States of America"}
    ]
}
_ITEM_TYPES = {"boolean": "boolean", "choice": "choice", "date": "date", "decimal": "decimal"}
UNIT_EXTENSION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"


def questionnaire_canonical(policy: Policy) -> tuple[str, str]:
    """(url, version) of the documentation Questionnaire, from ``url|version``."""
    url, _, version = policy.questionnaire_url.partition("|")
    return url, version


def rule_questionnaire_id(policy: Policy, rule_id: str) -> str:
    """The id of the DTR form for one indication rule (``...-eip-csii``)."""
    return f"{policy.questionnaire_id}-{rule_id.lower()}"


def rule_questionnaire_canonical(policy: Policy, rule_id: str) -> str:
    """``url|version`` of the DTR form for one indication rule: the form a
    coverage-information ``questionnaire`` names for an order decided under that rule."""
    _, version = questionnaire_canonical(policy)
    form_id = rule_questionnaire_id(policy, rule_id)
    return f"{terminology_base(policy)}/Questionnaire/{form_id}|{version}"


def terminology_base(policy: Policy) -> str:
    """Where our own code systems live: the questionnaire url up to ``/Questionnaire/``."""
    url, _ = questionnaire_canonical(policy)
    head, found, _ = url.rpartition("/Questionnaire/")
    return head if found else url.rsplit("/", 1)[0]


def option_system(policy: Policy, item: DocumentationItem) -> str:
    """The code system of a choice item's answer options."""
    return f"{terminology_base(policy)}/CodeSystem/{item.id}"


def computable_name(identifier: str) -> str:
    """A FHIR computable name (``[A-Z][A-Za-z0-9_]*``) from an id like ``mcs051-docs``."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", identifier) if w]
    name = "".join(w[0].upper() + w[1:] for w in words) or "Documentation"
    return name if name[0].isalpha() else f"Q{name}"


def _criteria_settled_by(policy: Policy, item_id: str) -> list[str]:
    lines = []
    for criterion in policy.criteria.values():
        if item_id in criterion.documentation:
            cited = "; ".join(c.render(policy.sources) for c in criterion.citations)
            lines.append(f"{criterion.id}: {criterion.text} ({cited})")
    return lines


def _help_item(item: DocumentationItem, settles: list[str]) -> dict[str, Any]:
    return {
        "extension": [
            {
                "url": ITEM_CONTROL,
                "valueCodeableConcept": {
                    "coding": [
                        {"system": ITEM_CONTROL_SYSTEM, "code": "help", "display": "Help-Button"}
                    ]
                },
            }
        ],
        "linkId": f"{item.id}.help",
        "text": "Settles: " + " | ".join(settles),
        "type": "display",
    }


def item_core(policy: Policy, item: DocumentationItem) -> dict[str, Any]:
    """What every form's item for a documentation item says: ``linkId`` = the item id, its
    code, text and type, and the unit of a decimal answer (UCUM)."""
    if item.answer_type not in _ITEM_TYPES:
        raise ValueError(
            f"documentation item {item.id}: no Questionnaire type for {item.answer_type!r}"
        )
    base = terminology_base(policy)
    entry: dict[str, Any] = {
        "linkId": item.id,
        "code": [{"system": f"{base}/CodeSystem/documentation-item", "code": item.id}],
        "text": item.text,
        "type": _ITEM_TYPES[item.answer_type],
    }
    if item.unit:
        entry["extension"] = [
            {
                "url": UNIT_EXTENSION,
                "valueCoding": {
                    "system": "http://unitsofmeasure.org",
                    "code": item.unit,
                    "display": item.unit,
                },
            }
        ]
    return entry


def questionnaire_item(policy: Policy, item: DocumentationItem) -> dict[str, Any]:
    """One documentation item as an item of the whole-policy Questionnaire: who supplies
    it, its answer options, and a help child naming the criteria it can settle."""
    core = item_core(policy, item)
    documentation_type = {
        "url": f"{terminology_base(policy)}/StructureDefinition/documentation-type",
        "valueCode": item.doc_type,
    }
    entry: dict[str, Any] = {"extension": [documentation_type, *core.pop("extension", [])]}
    entry.update(core)
    if item.answer_type == "choice":
        system = option_system(policy, item)
        entry["answerOption"] = [
            {"valueCoding": {"system": system, "code": code, "display": display}}
            for code, display in item.options
        ]
    settles = _criteria_settled_by(policy, item.id)
    if settles:
        entry["item"] = [_help_item(item, settles)]
    return entry


def questionnaire_resource(
    policy: Policy,
    *,
    form_id: str,
    canonical: tuple[str, str],
    title: str,
    description: str,
    publisher: str | None,
) -> dict[str, Any]:
    """What every form of the policy says of itself: identity, status, the policy's
    effective date and period (``date`` is the effective date: the policy data carries no
    other revision date, and a form changes only with it), publisher, jurisdiction."""
    url, version = canonical
    resource: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "id": form_id,
        "url": url,
        "version": version,
        "name": computable_name(form_id),
        "title": title,
        "status": "active",
        "subjectType": ["Patient"],
    }
    if policy.effective.start is not None:
        resource["date"] = policy.effective.start.isoformat()
    if publisher:
        resource["publisher"] = publisher
    resource["description"] = description
    resource["jurisdiction"] = [US]
    if policy.effective.start is not None or policy.effective.end is not None:
        period: dict[str, str] = {}
        if policy.effective.start is not None:
            period["start"] = policy.effective.start.isoformat()
        if policy.effective.end is not None:  # ours is exclusive, FHIR's inclusive
            period["end"] = (policy.effective.end - timedelta(days=1)).isoformat()
        resource["effectivePeriod"] = period
    return resource


def documentation_questionnaire(policy: Policy, publisher: str | None = None) -> dict[str, Any]:
    """The FHIR R4 Questionnaire asking every documentation item of ``policy``."""
    url, version = questionnaire_canonical(policy)
    questionnaire = questionnaire_resource(
        policy,
        form_id=policy.questionnaire_id,
        canonical=(url, version),
        title=policy.questionnaire_title,
        description=(
            f"Documentation that settles criteria of {policy.title} that a patient's record "
            f"does not show. Generated from policy {policy.id} version {policy.version}; each "
            "item's linkId is the policy's documentation item id."
        ),
        publisher=publisher,
    )
    questionnaire["item"] = [
        questionnaire_item(policy, item) for item in policy.documentation.values()
    ]
    return questionnaire


def matches_canonical(questionnaire: Mapping[str, Any], canonical: str) -> bool:
    """Whether ``canonical`` (``url`` or ``url|version``) names this Questionnaire."""
    url, bar, version = canonical.partition("|")
    if url != questionnaire.get("url"):
        return False
    return not bar or version == questionnaire.get("version")


def searchset_bundle(
    resources: Iterable[Mapping[str, Any]], base_url: str, self_url: str
) -> dict[str, Any]:
    """A FHIR ``searchset`` Bundle of ``resources`` (each a match), as a server returns it."""
    entries = [
        {
            "fullUrl": f"{base_url}/fhir/{resource['resourceType']}/{resource['id']}",
            "resource": dict(resource),
            "search": {"mode": "match"},
        }
        for resource in resources
    ]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": self_url}],
    }
    if entries:
        bundle["entry"] = entries
    return bundle
