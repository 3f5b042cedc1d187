"""The prefetch keys, named once: each is the patient data one FHIR query brings.

``facts.FACT_SOURCES`` says which facts each key's data speaks to, the hooks' prefetch
templates (``hooks.service``) say how each key is queried, and the record keeps each
key's Bundle apart, so a key that could not be had leaves exactly its facts unknown.
Shared by every hook, so a client can satisfy them once for all services.
"""

from __future__ import annotations

PATIENT = "patient"
COVERAGE = "coverage"  # the patient's active Coverages
CONDITIONS = "conditions"
MEDICATION_REQUESTS = "medicationRequests"
OBSERVATIONS = "observations"  # the lab results the lab facts read (bindings/labs.json)
ALLERGIES = "allergies"
DEVICES = "devices"
ENCOUNTERS = "encounters"  # the most recent ones
PROCEDURES = "procedures"
QUESTIONNAIRE_RESPONSES = "questionnaireResponses"
ENCOUNTER = "encounter"  # the current encounter, ``context.encounterId``
# Where order-dispatch finds the dispatched DeviceRequests when the client sends them;
# no fact reads it, so it is never fetched.
DEVICE_REQUESTS = "deviceRequests"
