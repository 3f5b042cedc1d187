"""The coverage policy as data, and the small engine that evaluates it.

Imports nothing of the service, the hooks or the FHIR mappings: facts and a date in,
a decision with a per-criterion trace out.
"""
