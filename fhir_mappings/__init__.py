"""FHIR R4 resources → policy facts. No I/O; the only package that imports fhir.resources."""
