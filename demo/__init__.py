"""Trying the service locally: ``make demo`` (a FHIR server loaded with patients, the
service, and a page to sign orders on). Not part of the installed package."""
