"""QuestionnaireResponse → documentation item answers (POLICY-BRIEF section 6).

Only completed or amended responses to the service's own documentation Questionnaires
count (the whole-policy form, and the per-rule adaptive DTR forms, whose answers come
back with the form contained); items are read by linkId, and the most recent answer per item wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

from coverage_policy.model import DocumentationItem, Evidence, FactValue
from fhir_mappings.dates import as_date
from fhir_mappings.evidence import evidence_summary
from fhir_mappings.record import PatientRecord


def _items(items: Any) -> Iterator[Any]:
    for item in items or []:
        yield item
        yield from _items(item.item)
        for answer in item.answer or []:
            yield from _items(answer.item)


def _answer_value(answer: Any, item: DocumentationItem) -> Any:
    if item.answer_type == "boolean":
        return answer.valueBoolean
    if item.answer_type == "choice":
        return getattr(answer.valueCoding, "code", None) or answer.valueString
    if item.answer_type == "date":
        return as_date(answer.valueDate or answer.valueDateTime)
    if item.answer_type == "decimal":
        quantity = answer.valueQuantity
        if quantity is not None:
            return item.decimal_answer(quantity.value, quantity.code or quantity.unit)
        for value in (answer.valueDecimal, answer.valueInteger):
            if value is not None:
                return item.decimal_answer(value)
    return None


def _ours(canonical: Any, questionnaire_url: str) -> bool:
    """The whole-policy form, or one of the per-rule DTR forms, whose urls extend it
    (``<url>-<rule>``); any version, so answers to an older version still count."""
    if not isinstance(canonical, str) or not canonical:
        return False
    url, ours = canonical.split("|")[0], questionnaire_url.split("|")[0]
    return url == ours or url.startswith(f"{ours}-")


def _same_questionnaire(response: Any, questionnaire_url: str) -> bool:
    """Whether ``response`` answers one of our forms: by its ``questionnaire`` canonical,
    or, for an adaptive response, by the contained form it points at (``#id``), which
    is ours when its url or ``derivedFrom`` is."""
    canonical = response.questionnaire
    if not isinstance(canonical, str) or not canonical.startswith("#"):
        return _ours(canonical, questionnaire_url)
    for contained in response.contained or []:
        if getattr(contained, "id", None) == canonical[1:]:
            named = [
                getattr(contained, "url", None),
                *(getattr(contained, "derivedFrom", None) or []),
            ]
            return any(_ours(c, questionnaire_url) for c in named)
    return False


def documentation_facts(
    record: PatientRecord,
    items: dict[str, DocumentationItem],
    questionnaire_url: str,
    as_of: date,
    answered_by: date | None = None,
) -> dict[str, FactValue]:
    """``doc.<item id>`` facts: the latest answer per item, None where never answered.

    Answers count when authored by ``answered_by`` (the day of the call), else by the
    order date: documentation is often completed after an order was drafted and before it
    is signed. What an answer says (a date within 6 months, say) is still judged as of the
    order date ``as_of``."""
    cutoff = max(as_of, answered_by) if answered_by else as_of
    latest: dict[str, tuple[date, FactValue]] = {}
    for entry in record.of_type("QuestionnaireResponse"):
        response = entry.resource
        if response.status not in ("completed", "amended"):
            continue
        if not _same_questionnaire(response, questionnaire_url):
            continue
        authored = as_date(response.authored) or date.min
        if authored > cutoff:
            continue
        for item in _items(response.item):
            spec = items.get(item.linkId)
            if spec is None or not item.answer:
                continue
            value = _answer_value(item.answer[0], spec)
            if value is None:
                continue
            known = latest.get(spec.id)
            if known is None or authored >= known[0]:
                shown = value.isoformat() if isinstance(value, date) else value
                summary = evidence_summary(
                    "documentation",
                    "answered",
                    item=spec.id,
                    answer=shown,
                    authored=authored.isoformat(),
                )
                latest[spec.id] = (
                    authored,
                    FactValue(value, (Evidence(entry.reference, summary),)),
                )
    return {
        f"doc.{item_id}": latest[item_id][1] if item_id in latest else FactValue(None)
        for item_id in items
    }


def _answered(documentation: Mapping[str, FactValue], item_id: str) -> FactValue | None:
    fact = documentation.get(f"doc.{item_id}")
    return fact if fact is not None and fact.value is not None else None


def stated_facts(documentation: Mapping[str, FactValue], as_of: date) -> dict[str, FactValue]:
    """Record facts that answers state where the record does not show them (the items'
    ``states`` in the policy): the pump kind, where the pump is used, and a C-peptide
    result with the lab's lower limit of normal, its date and the glucose drawn with it
    (as a lab Observation would give them: a draw after the order date does not count)."""
    stated: dict[str, FactValue] = {}
    kind = _answered(documentation, "pump-kind")
    if kind:
        stated["episode.pump_kind"] = kind
    setting = _answered(documentation, "pump-use-setting")
    if setting:
        stated["order.setting"] = setting
    drawn = _answered(documentation, "c-peptide-date")
    if drawn and drawn.value <= as_of:
        result = _answered(documentation, "c-peptide-result")
        low = _answered(documentation, "c-peptide-lower-limit")
        if result and low and low.value > 0:
            evidence = (*result.evidence, *low.evidence, *drawn.evidence)
            percent = round(100 * result.value / low.value, 1)
            stated["lab.c_peptide_percent_of_lln"] = FactValue(percent, evidence)
        glucose = _answered(documentation, "c-peptide-fasting-glucose")
        if glucose:
            stated["lab.c_peptide_fasting_glucose_mg_dl"] = FactValue(
                glucose.value, (*glucose.evidence, *drawn.evidence)
            )
    clearance = _answered(documentation, "creatinine-clearance")
    if clearance:
        stated["lab.creatinine_clearance_ml_min"] = clearance
    return stated
