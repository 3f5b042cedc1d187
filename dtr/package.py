"""``$questionnaire-package`` and ``$next-question`` bodies: reading their Parameters and
building their answers (DTR 2.0.1). Pure.

The 2.0.1 texts spell some parameters differently; we emit the OperationDefinition's and
example's names (``PackageBundle``, ``outcome``, ``return``) and accept the others on
input (``questionnaire-response`` or ``questionnaire-response-in``; ``outcome`` or
``operationOutcome``; ``order`` and ``referenced``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dtr.adaptive import FormInputError, FormProblem, check_response_shape, listed

RESPONSE_PARAMETER_NAMES = ("questionnaire-response", "questionnaire-response-in")
ERROR_PARAMETER_NAMES = ("outcome", "operationOutcome")


@dataclass(frozen=True, slots=True)
class PackageRequest:
    coverage: Mapping[str, Any]
    orders: tuple[Mapping[str, Any], ...]
    referenced: tuple[Mapping[str, Any], ...]
    questionnaires: tuple[str, ...]
    context: str | None


def _parameters(body: Any) -> list[tuple[Mapping[str, Any], str]]:
    if not isinstance(body, Mapping) or body.get("resourceType") != "Parameters":
        raise FormInputError(
            [FormProblem("The body must be a FHIR Parameters resource", "resourceType")]
        )
    parameters = body.get("parameter")
    if not isinstance(parameters, list) or not parameters:
        raise FormInputError(
            [FormProblem("Parameters.parameter must list the inputs", "Parameters.parameter")]
        )
    found = []
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, Mapping) or not isinstance(parameter.get("name"), str):
            raise FormInputError([FormProblem("each parameter needs a name", where)])
        found.append((parameter, where))
    return found


def _resource(
    parameter: Mapping[str, Any], where: str, types: Iterable[str] | None = None
) -> Mapping[str, Any]:
    resource = parameter.get("resource")
    if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
        raise FormInputError(
            [FormProblem(f"'{parameter['name']}' must carry a resource", f"{where}.resource")]
        )
    allowed = tuple(types or ())
    if allowed and resource["resourceType"] not in allowed:
        raise FormInputError(
            [
                FormProblem(
                    f"'{parameter['name']}' must be one of {', '.join(allowed)}",
                    f"{where}.resource.resourceType",
                )
            ]
        )
    return resource


def _string(parameter: Mapping[str, Any], where: str, *kinds: str) -> str:
    for kind in kinds:
        value = parameter.get(kind)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise FormInputError([FormProblem(f"'{parameter['name']}' needs {' or '.join(kinds)}", where)])


ORDER_TYPES = (
    "DeviceRequest",
    "MedicationRequest",
    "ServiceRequest",
    "NutritionOrder",
    "SupplyRequest",
    "VisionPrescription",
    "CommunicationRequest",
    "Appointment",
    "Encounter",
)


def _coverage(resource: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The Coverage, its ``beneficiary`` (read for the response's subject) a Reference."""
    beneficiary = resource.get("beneficiary")
    if beneficiary is not None and not (
        isinstance(beneficiary, Mapping) and isinstance(beneficiary.get("reference", ""), str)
    ):
        raise FormInputError(
            [
                FormProblem(
                    "the Coverage's 'beneficiary' must be a Reference",
                    f"{where}.resource.beneficiary",
                )
            ]
        )
    return resource


def read_package_request(body: Any) -> PackageRequest:
    """The inputs of ``$questionnaire-package`` (DTR dtr-qpackage-input-parameters)."""
    coverage: list[Mapping[str, Any]] = []
    orders: list[Mapping[str, Any]] = []
    referenced: list[Mapping[str, Any]] = []
    questionnaires: list[str] = []
    context: str | None = None
    for parameter, where in _parameters(body):
        name = parameter["name"]
        if name == "coverage":
            coverage.append(_coverage(_resource(parameter, where, ("Coverage",)), where))
        elif name == "order":
            orders.append(_resource(parameter, where, ORDER_TYPES))
        elif name == "referenced":
            referenced.append(_resource(parameter, where))
        elif name == "questionnaire":
            questionnaires.append(
                _string(parameter, where, "valueCanonical", "valueUri", "valueUrl")
            )
        elif name == "context":
            context = _string(parameter, where, "valueString", "valueId")
        # 'changedsince' (DTR allows it: only forms changed since then) is accepted and
        # not read: the forms are generated from the policy each time, so the whole
        # package is always a correct answer.
    if len(coverage) != 1:
        raise FormInputError(
            [FormProblem("Exactly one 'coverage' Coverage is required", "Parameters.parameter")]
        )
    if not (orders or questionnaires or context):
        raise FormInputError(
            [
                FormProblem(
                    "At least one of 'order', 'questionnaire' and 'context' is required (dtr-1)",
                    "Parameters.parameter",
                )
            ]
        )
    return PackageRequest(
        coverage[0], tuple(orders), tuple(referenced), tuple(questionnaires), context
    )


def read_next_question_request(body: Any) -> Mapping[str, Any]:
    """The QuestionnaireResponse of a ``$next-question`` call (in Parameters, or bare)."""
    if isinstance(body, Mapping) and body.get("resourceType") == "QuestionnaireResponse":
        check_response_shape(body)
        return body
    for parameter, where in _parameters(body):
        if parameter["name"] in RESPONSE_PARAMETER_NAMES:
            response = _resource(parameter, where, ("QuestionnaireResponse",))
            check_response_shape(response)
            return response
    raise FormInputError(
        [
            FormProblem(
                "A 'questionnaire-response' parameter with the QuestionnaireResponse is required",
                "Parameters.parameter",
            )
        ]
    )


def read_logged_errors(body: Any) -> tuple[list[str], list[Mapping[str, Any]]]:
    """The canonicals and OperationOutcomes of a ``$log-questionnaire-errors`` call."""
    canonicals: list[str] = []
    outcomes: list[Mapping[str, Any]] = []
    for parameter, where in _parameters(body):
        if parameter["name"] == "questionnaire":
            canonicals.append(_string(parameter, where, "valueCanonical", "valueUri"))
        elif parameter["name"] in ERROR_PARAMETER_NAMES:
            logged = _resource(parameter, where, ("OperationOutcome",))
            listed(logged.get("issue"), f"{where}.resource.issue")
            outcomes.append(logged)
    if not canonicals or not outcomes:
        raise FormInputError(
            [
                FormProblem(
                    "'questionnaire' and 'outcome' OperationOutcome are required",
                    "Parameters.parameter",
                )
            ]
        )
    return canonicals, outcomes


def package_bundle(
    form: Mapping[str, Any],
    valuesets: Iterable[Mapping[str, Any]],
    response: Mapping[str, Any],
    base: str,
) -> dict[str, Any]:
    """One Questionnaire's package: a ``collection`` Bundle, the Questionnaire first
    (dtrb-1), then the ValueSets it binds, then the draft QuestionnaireResponse."""
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/Questionnaire/{form['id']}", "resource": dict(form)}
    ]
    entries += [{"fullUrl": f"{base}/ValueSet/{v['id']}", "resource": dict(v)} for v in valuesets]
    entries.append({"resource": dict(response)})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def package_parameters(
    bundles: Iterable[Mapping[str, Any]], outcome: Mapping[str, Any] | None
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "PackageBundle", "resource": dict(b)} for b in bundles
    ]
    if outcome is not None:
        parameters.append({"name": "outcome", "resource": dict(outcome)})
    return {"resourceType": "Parameters", "parameter": parameters}


def outcome(issues: Iterable[tuple[str, str, str]]) -> dict[str, Any] | None:
    """An OperationOutcome of ``(severity, code, diagnostics)`` issues, None if none."""
    listed = [{"severity": s, "code": c, "diagnostics": d} for s, c, d in issues]
    return {"resourceType": "OperationOutcome", "issue": listed} if listed else None
