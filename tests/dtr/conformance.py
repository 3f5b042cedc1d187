"""Conformance checks for what the DTR payer endpoints answer, each written from a
constraint of the DTR 2.0.1 or SDC profiles (their FSH sources; the HL7 validator does
not install here) and citing it. Each check returns the violations it finds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QR_CONTEXT = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/qr-context"
INTENDED_USE = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/intendedUse"
INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
ADAPTIVE = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-questionnaireAdaptive"
COVERAGE_INFORMATION = (
    "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
)


def _extensions(resource: Mapping[str, Any], url: str) -> list[Mapping[str, Any]]:
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def _items(items: Any) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for item in items or []:
        found.append(item)
        found += _items(item.get("item"))
    return found


def adaptive_questionnaire(form: Mapping[str, Any]) -> list[str]:
    problems = []
    if not _extensions(form, ADAPTIVE):
        problems.append("dtr-questionnaire-adapt: the questionnaireAdaptive extension is missing")
    if not (form.get("text") or {}).get("div"):
        problems.append("dtr-questionnaire-adapt: text 1..1")
    for item in _items(form.get("item")):
        if item.get("enableWhen") or item.get("enableBehavior"):
            problems.append(f"dtr-questionnaire-adapt: item.enableWhen 0..0 ({item['linkId']})")
        if item.get("type") == "choice" and not (
            item.get("answerOption") or item.get("answerValueSet")
        ):
            problems.append(f"dtrq-2: choice item {item['linkId']} has no answers")
        bound = item.get("answerValueSet")
        if bound and "|" not in bound:
            problems.append(f"oper-16: answerValueSet {bound} is not version-specific")
        if item.get("answerOption") and bound:
            problems.append(f"que-4: {item['linkId']} has both answerOption and answerValueSet")
    if form.get("status") not in ("draft", "active", "retired", "unknown"):
        problems.append("Questionnaire.status 1..1")
    return problems


def questionnaire_response(response: Mapping[str, Any], *, completed: bool) -> list[str]:
    """dtr-questionnaireresponse (and the adapt profile for the contained form)."""
    problems = []
    contexts = [
        e.get("valueReference", {}).get("reference", "") for e in _extensions(response, QR_CONTEXT)
    ]
    if len(contexts) < 2:
        problems.append("dtr-questionnaireresponse: qr-context 2..*")
    if not any(c.startswith("Coverage/") for c in contexts):
        problems.append("dtr-questionnaireresponse: a context SHALL refer to a Coverage")
    if not any(c and not c.startswith("Coverage/") for c in contexts):
        problems.append(
            "dtr-questionnaireresponse: a context SHALL refer to a Request or Encounter"
        )
    if not _extensions(response, INTENDED_USE):
        problems.append("dtr-questionnaireresponse: intendedUse 1..*")
    if not isinstance(response.get("questionnaire"), str):
        problems.append("dtr-questionnaireresponse: questionnaire 1..1")
    if response.get("basedOn") or response.get("partOf"):
        problems.append("dtr-questionnaireresponse: basedOn 0..0, partOf 0..0")
    if not (response.get("subject") or {}).get("reference", "").startswith("Patient/"):
        problems.append("dtr-questionnaireresponse: subject 1..1 Reference(Patient)")
    if response.get("status") not in (
        "in-progress",
        "completed",
        "amended",
        "entered-in-error",
        "stopped",
    ):
        problems.append("QuestionnaireResponse.status 1..1 (questionnaire-answers-status)")
    target = response.get("questionnaire", "")
    contained = [
        r for r in response.get("contained") or [] if r.get("resourceType") == "Questionnaire"
    ]
    if target.startswith("#"):
        form = next((r for r in contained if r.get("id") == target[1:]), None)
        if form is None:
            problems.append(
                "sdc-questionnaireresponse-adapt: questionnaire SHALL resolve to the contained form"
            )
        else:
            problems += adaptive_questionnaire(form)
            if not form.get("derivedFrom"):
                problems.append(
                    "dtr-questionnaire-adapt: derivedFrom names the form it complies with"
                )
            asked = {i["linkId"] for i in _items(form.get("item"))}
            answered = {i["linkId"] for i in _items(response.get("item"))}
            if answered - asked:
                problems.append(
                    f"qrs-1: items answered that the form does not have: {sorted(answered - asked)}"
                )
    for item in _items(response.get("item")):
        for answer in item.get("answer") or []:
            origins = _extensions(answer, INFORMATION_ORIGIN)
            if len(origins) != 1:
                problems.append(f"dtr-questionnaireresponse: answer origin 1..1 ({item['linkId']})")
                continue
            parts = {e["url"]: e for e in origins[0].get("extension") or []}
            source = parts.get("source", {}).get("valueCode")
            if source not in ("auto", "override", "manual"):
                problems.append(
                    f"information-origin: source auto | override | manual ({item['linkId']})"
                )
            if (source == "auto") == ("author" in parts):
                problems.append(f"dtrx-1: author with override or manual only ({item['linkId']})")
    if completed:
        if response.get("status") != "completed":
            problems.append("sdc $next-question: a response with nothing left to ask is completed")
        if not response.get("item"):
            problems.append("dtr-questionnaireresponse: item 1..*")
    return problems


def package_parameters(parameters: Mapping[str, Any]) -> list[str]:
    """dtr-qpackage-output-parameters and the DTRQuestionnairePackageBundle."""
    problems = []
    if parameters.get("resourceType") != "Parameters":
        return ["oper-10: the answer SHALL be a Parameters resource"]
    for parameter in parameters.get("parameter") or []:
        name = parameter.get("name")
        resource = parameter.get("resource") or {}
        if name == "outcome":
            if resource.get("resourceType") != "OperationOutcome":
                problems.append("dtr-qpackage-output-parameters: outcome is an OperationOutcome")
            continue
        if name != "PackageBundle":
            problems.append(f"dtr-qpackage-output-parameters: unexpected parameter {name}")
            continue
        if resource.get("resourceType") != "Bundle" or resource.get("type") != "collection":
            problems.append("DTRQuestionnairePackageBundle: a collection Bundle")
        entries = [e.get("resource") or {} for e in resource.get("entry") or []]
        if not entries or entries[0].get("resourceType") != "Questionnaire":
            problems.append("dtrb-1: the first resource in the bundle must be a Questionnaire")
            continue
        problems += adaptive_questionnaire(entries[0])
        responses = [e for e in entries if e.get("resourceType") == "QuestionnaireResponse"]
        if len(responses) != 1:
            problems.append("oper-18: exactly one initial QuestionnaireResponse")
        else:
            problems += questionnaire_response(responses[0], completed=False)
        bound = {
            str(i["answerValueSet"])
            for i in _items(entries[0].get("item"))
            if i.get("answerValueSet")
        }
        present = {
            f"{e['url']}|{e['version']}" for e in entries if e.get("resourceType") == "ValueSet"
        }
        if bound - present:
            problems.append(
                f"oper-14: ValueSets bound but not in the package: {sorted(bound - present)}"
            )
        for valueset in (e for e in entries if e.get("resourceType") == "ValueSet"):
            if len(valueset.get("expansion", {}).get("contains") or []) < 1:
                problems.append(f"oper-15: ValueSet {valueset['url']} is not expanded")
    return problems
