"""Reading untrusted FHIR R4 JSON into what the facts read, checked for shape first.

The patient's record (prefetch, fetched data) is not validated as whole R4 resources:
only the elements some fact reads are, against the R4 JSON type of each (``SHAPES``).
A resource whose read elements have the wrong shape (an object where a string belongs,
a number where a list belongs, a code with spaces at its ends, a date that is not a
date, a string that is not Unicode text) is refused with a ``ResourceProblem`` naming
where it is wrong; elements nothing reads are not looked at. What a resource gives back
is an ``Element``: attribute access to exactly the elements of its shape (an absent one
is None), as the R4B models spell them (``class`` is ``class_fhir``), so the facts read
draft orders (full R4B models) and record resources alike.

Primitive values are checked as strictly as FHIR JSON writes them: a boolean is
``true``/``false``, an integer or decimal a JSON number, every string Unicode text with
no lone surrogate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from fhir_mappings.r4 import FHIR_ID, InvalidResource, ResourceProblem, named_problem, shown_id

# R4 JSON primitive types (http://hl7.org/fhir/R4/datatypes.html), as regular expressions.
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_MONTH = r"(0[1-9]|1[0-2])"
_DATE = re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY})?)?")
_DATETIME = re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY}(T{_TIME}{_ZONE})?)?)?")
_INSTANT = re.compile(rf"{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_ZONE}")
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_STRING = re.compile(r"[ \r\n\t\S]+")


def _is_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone UTF-16 surrogate
        return False
    return True


def _calendar(value: str) -> bool:
    if len(value) < 10:
        return True
    try:
        date.fromisoformat(value[:10])
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


PRIMITIVES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: _is_text(v) and _STRING.fullmatch(v) is not None, "a string"),
    "code": (lambda v: _is_text(v) and _CODE.fullmatch(v) is not None, "a code"),
    "id": (lambda v: _is_text(v) and FHIR_ID.fullmatch(v) is not None, "an id"),
    "uri": (_is_text, "a uri"),
    "canonical": (_is_text, "a canonical URL"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "decimal": (_is_number, "a number"),
    "integer": (_is_integer, "an integer"),
    "positiveInt": (lambda v: _is_integer(v) and v > 0, "a positive integer"),
    "unsignedInt": (lambda v: _is_integer(v) and v >= 0, "a non-negative integer"),
    "date": (
        lambda v: _is_text(v) and _DATE.fullmatch(v) is not None and _calendar(v),
        "a date",
    ),
    "dateTime": (
        lambda v: _is_text(v) and _DATETIME.fullmatch(v) is not None and _calendar(v),
        "a dateTime",
    ),
    "instant": (
        lambda v: _is_text(v) and _INSTANT.fullmatch(v) is not None and _calendar(v),
        "an instant",
    ),
}

# Every element some fact reads, per resource type and data type: JSON name -> R4 type;
# "[]" marks a list. "Resource" is a contained resource, read by its own type's shape.
SHAPES: dict[str, dict[str, str]] = {
    # Data types
    "Coding": {"system": "uri", "code": "code", "display": "string"},
    "CodeableConcept": {"coding": "Coding[]", "text": "string"},
    "Reference": {"reference": "string"},
    "Period": {"start": "dateTime", "end": "dateTime"},
    "Quantity": {"value": "decimal", "unit": "string", "code": "code"},
    "TimingRepeat": {
        "boundsPeriod": "Period",
        "frequency": "positiveInt",
        "frequencyMax": "positiveInt",
        "period": "decimal",
        "periodUnit": "code",
    },
    "Timing": {"repeat": "TimingRepeat"},
    "Dosage": {
        "text": "string",
        "patientInstruction": "string",
        "additionalInstruction": "CodeableConcept[]",
        "timing": "Timing",
        "site": "CodeableConcept",
        "route": "CodeableConcept",
        "method": "CodeableConcept",
    },
    # Resources
    "Patient": {
        "id": "id",
        "birthDate": "date",
        "deceasedBoolean": "boolean",
        "deceasedDateTime": "dateTime",
    },
    "Coverage": {
        "id": "id",
        "status": "code",
        "type": "CodeableConcept",
        "class": "CoverageClass[]",
        "period": "Period",
    },
    "CoverageClass": {"type": "CodeableConcept", "value": "string", "name": "string"},
    "Condition": {
        "id": "id",
        "clinicalStatus": "CodeableConcept",
        "verificationStatus": "CodeableConcept",
        "code": "CodeableConcept",
        "onsetDateTime": "dateTime",
        "onsetPeriod": "Period",
        "abatementDateTime": "dateTime",
        "abatementPeriod": "Period",
    },
    "MedicationRequest": {
        "id": "id",
        "contained": "Resource[]",
        "status": "code",
        "medicationCodeableConcept": "CodeableConcept",
        "medicationReference": "Reference",
        "authoredOn": "dateTime",
        "dosageInstruction": "Dosage[]",
        "dispenseRequest": "MedicationRequestDispenseRequest",
    },
    "MedicationRequestDispenseRequest": {
        "validityPeriod": "Period",
        "numberOfRepeatsAllowed": "unsignedInt",
        "expectedSupplyDuration": "Quantity",
    },
    "Medication": {"id": "id", "code": "CodeableConcept"},
    "Observation": {
        "id": "id",
        "status": "code",
        "code": "CodeableConcept",
        "effectiveDateTime": "dateTime",
        "effectivePeriod": "Period",
        "issued": "instant",
        "valueQuantity": "Quantity",
        "referenceRange": "ObservationReferenceRange[]",
    },
    "ObservationReferenceRange": {"low": "Quantity"},
    "AllergyIntolerance": {
        "id": "id",
        "clinicalStatus": "CodeableConcept",
        "verificationStatus": "CodeableConcept",
        "code": "CodeableConcept",
        "reaction": "AllergyIntoleranceReaction[]",
    },
    "AllergyIntoleranceReaction": {"substance": "CodeableConcept"},
    "Device": {
        "id": "id",
        "status": "code",
        "deviceName": "DeviceDeviceName[]",
        "type": "CodeableConcept",
    },
    "DeviceDeviceName": {"name": "string"},
    "Procedure": {
        "id": "id",
        "status": "code",
        "code": "CodeableConcept",
        "performedDateTime": "dateTime",
        "performedPeriod": "Period",
    },
    "Encounter": {
        "id": "id",
        "status": "code",
        "class": "Coding",
        "participant": "EncounterParticipant[]",
        "period": "Period",
        "location": "EncounterLocation[]",
    },
    "EncounterParticipant": {"individual": "Reference"},
    "EncounterLocation": {"location": "Reference"},
    "Location": {"id": "id", "type": "CodeableConcept[]"},
    "QuestionnaireResponse": {
        "id": "id",
        "contained": "Resource[]",
        "questionnaire": "canonical",
        "status": "code",
        "authored": "dateTime",
        "item": "QuestionnaireResponseItem[]",
    },
    "QuestionnaireResponseItem": {
        "linkId": "string",
        "answer": "QuestionnaireResponseItemAnswer[]",
        "item": "QuestionnaireResponseItem[]",
    },
    "QuestionnaireResponseItemAnswer": {
        "valueBoolean": "boolean",
        "valueDecimal": "decimal",
        "valueInteger": "integer",
        "valueQuantity": "Quantity",
        "valueDate": "date",
        "valueDateTime": "dateTime",
        "valueString": "string",
        "valueCoding": "Coding",
        "item": "QuestionnaireResponseItem[]",
    },
    # Only as contained in a QuestionnaireResponse: the adaptive form it answers.
    "Questionnaire": {"id": "id", "url": "uri", "derivedFrom": "canonical[]"},
}

# A contained resource of a type without a shape: only what finds it.
_ANY_RESOURCE = {"resourceType": "code", "id": "id"}

# The resource types the facts read (those with a shape of their own).
READ_TYPES = frozenset(
    {
        "Patient",
        "Coverage",
        "Condition",
        "MedicationRequest",
        "Medication",
        "Observation",
        "AllergyIntolerance",
        "Device",
        "Procedure",
        "Encounter",
        "Location",
        "QuestionnaireResponse",
    }
)

# The resource types read when contained: those of the record, and an adaptive form.
CONTAINED_TYPES = READ_TYPES | {"Questionnaire"}


class Element:
    """One JSON object read for shape: its shape's elements as attributes (None if
    absent); any other attribute is an error, so every element read was checked."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if v is not None)
        return f"Element({shown})"


class _ShapeError(Exception):
    """An element of the wrong shape; ``parts`` is its path, filled in on the way out."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected
        self.parts: list[str | int] = []

    @property
    def where(self) -> str:
        text = ""
        for part in reversed(self.parts):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text


_Reader = Callable[[Any, int], Any]
# How deep read elements may nest (QuestionnaireResponse items nest; real ones a few
# levels): deeper is refused as "nested too deeply", whatever the interpreter's stack.
MAX_DEPTH = 64


class _Shape:
    """A shape compiled for reading: its fields in shape order, as (JSON name, attribute
    name, is a list, how to read one), and the same by JSON name."""

    __slots__ = ("attributes", "by_name", "fields")

    def __init__(self, fields: tuple[tuple[str, str, bool, _Reader], ...] = ()) -> None:
        self.fields = fields
        self.attributes = tuple(attribute for _, attribute, _, _ in fields)
        self.by_name = {
            name: (attribute, is_list, read) for name, attribute, is_list, read in fields
        }


def _primitive_reader(kind: str) -> _Reader:
    check, expected = PRIMITIVES[kind]

    def read(value: Any, depth: int) -> Any:
        if not check(value):
            raise _ShapeError(expected)
        return value

    return read


class _ObjectReader:
    """Reads a JSON object by a compiled shape (set after creation, so a shape such as
    QuestionnaireResponseItem can contain itself)."""

    __slots__ = ("shape",)

    def __init__(self) -> None:
        self.shape = _Shape()

    def __call__(self, value: Any, depth: int) -> Element:
        if not isinstance(value, dict):
            raise _ShapeError("an object")
        return Element(_read_object(self.shape, value, depth + 1))

    def in_shape_order(self, value: Any, depth: int) -> Element:
        if not isinstance(value, dict):
            raise _ShapeError("an object")
        return Element(_read_in_shape_order(self.shape, value, depth + 1))


def _resource_shape(value: Any) -> tuple[str, _Shape]:
    if not isinstance(value, dict):
        raise _ShapeError("an object")
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        error = _ShapeError("a resource type")
        error.parts.append("resourceType")
        raise error
    shape = _COMPILED[resource_type] if resource_type in CONTAINED_TYPES else _COMPILED_ANY
    return resource_type, shape


def _resource_reader(value: Any, depth: int) -> Element:
    """A contained resource: read by its own type's shape, or for its id only."""
    resource_type, shape = _resource_shape(value)
    values = _read_object(shape, value, depth + 1)
    values["resourceType"] = resource_type
    return Element(values)


def _resource_reader_in_shape_order(value: Any, depth: int) -> Element:
    resource_type, shape = _resource_shape(value)
    values = _read_in_shape_order(shape, value, depth + 1)
    values["resourceType"] = resource_type
    return Element(values)


def _compile() -> tuple[dict[str, _Shape], _Shape]:
    readers: dict[str, _Reader] = {kind: _primitive_reader(kind) for kind in PRIMITIVES}
    readers["Resource"] = _resource_reader
    objects = {name: _ObjectReader() for name in SHAPES}
    readers.update(objects)

    def compiled(shape: Mapping[str, str]) -> _Shape:
        return _Shape(
            tuple(
                (name, _attribute(name), kind.endswith("[]"), readers[kind.removesuffix("[]")])
                for name, kind in shape.items()
            )
        )

    for name, reader in objects.items():
        reader.shape = compiled(SHAPES[name])
    return {name: reader.shape for name, reader in objects.items()}, compiled(_ANY_RESOURCE)


def _attribute(name: str) -> str:
    return "class_fhir" if name == "class" else name


class _TooDeep(Exception):
    pass


def _read_object(shape: _Shape, value: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """The shape's elements of ``value`` (None when absent), looking only at the members
    present. A wrong shape raises, but not necessarily at the element
    ``_read_in_shape_order`` names first: ``read_resource`` asks that one what to name."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    values = dict.fromkeys(shape.attributes)
    by_name = shape.by_name
    for name, item in value.items():
        field = by_name.get(name)
        if field is None or item is None:
            continue
        attribute, is_list, read = field
        if not is_list:
            values[attribute] = read(item, depth)
        elif not isinstance(item, list):
            raise _ShapeError("a list")
        else:
            values[attribute] = [read(element, depth) for element in item]
    return values


def _in_shape_order(read: _Reader) -> _Reader:
    if isinstance(read, _ObjectReader):
        return read.in_shape_order
    if read is _resource_reader:
        return _resource_reader_in_shape_order
    return read


def _read_in_shape_order(shape: _Shape, value: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """``_read_object`` element by element in shape order, so the first element of the
    wrong shape is the one named, with its path."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    values: dict[str, Any] = {}
    for name, attribute, is_list, reader in shape.fields:
        read = _in_shape_order(reader)
        item = value.get(name)
        if item is None:
            values[attribute] = None
        elif not is_list:
            try:
                values[attribute] = read(item, depth)
            except _ShapeError as error:
                error.parts.append(name)
                raise
        elif not isinstance(item, list):
            not_list = _ShapeError("a list")
            not_list.parts.append(name)
            raise not_list
        else:
            items = []
            for index, element in enumerate(item):
                try:
                    items.append(read(element, depth))
                except _ShapeError as error:
                    error.parts += [index, name]
                    raise
            values[attribute] = items
    return values


_COMPILED, _COMPILED_ANY = _compile()


def _problem(
    error: Exception, raw: Mapping[str, Any], resource_type: str, path: str
) -> ResourceProblem:
    if isinstance(error, _ShapeError):
        message = f"{error.where}: expected {error.expected}"
    else:  # valid JSON, nested deeper than any real resource
        message = "nested too deeply"
    return ResourceProblem(resource_type, shown_id(raw), path, message)


def read_resource(raw: Mapping[str, Any], path: str) -> Element:
    """The elements the facts read of one resource of a ``READ_TYPES`` type, checked for
    shape. Raises ``InvalidResource`` naming the type, id, path and the first element
    whose shape is wrong."""
    resource_type = raw.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in READ_TYPES:
        raise InvalidResource(named_problem(raw, path, "not a resource type read here"))
    shape = _COMPILED[resource_type]
    try:
        values = _read_object(shape, raw, 0)
    except (_ShapeError, _TooDeep, RecursionError) as first:
        try:
            _read_in_shape_order(shape, raw, 0)
        except (_ShapeError, _TooDeep, RecursionError) as named:
            raise InvalidResource(_problem(named, raw, resource_type, path)) from None
        # Both read the same elements, so this is not reached.
        raise InvalidResource(_problem(first, raw, resource_type, path)) from None
    values["resourceType"] = resource_type
    return Element(values)
