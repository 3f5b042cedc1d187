"""One module per hook the service answers: service definition, prefetch, handler."""

from __future__ import annotations

import json
from functools import cache

from jsonschema import Draft202012Validator

from hooks import order_dispatch, order_select, order_sign
from hooks.service import ServiceDefinition

SERVICES: dict[str, ServiceDefinition] = {
    module.SERVICE.id: module.SERVICE for module in (order_sign, order_select, order_dispatch)
}


@cache
def _validator(service_id: str) -> Draft202012Validator:
    schema = SERVICES[service_id].context_schema
    Draft202012Validator.check_schema(json.loads(json.dumps(schema)))
    return Draft202012Validator(schema)


def context_validator(service: ServiceDefinition) -> Draft202012Validator:
    """The JSON Schema validator of a service's hook context (checked once)."""
    return _validator(service.id)
