"""Every CDS Hooks request of the CRD conformance test kit (../shared) is accepted.

(The Synthea records run through the service in tests/test_corpus.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED, load_json, make_app
from tests.response_validation import validate_cds_response

CRD_REQUESTS = (
    sorted((SHARED / "crd-examples" / "spec-fixtures").glob("*_hook_request.json"))
    if SHARED.is_dir()
    else []
)


@pytest.mark.parametrize("request_file", CRD_REQUESTS, ids=lambda p: p.stem)
def test_crd_test_kit_requests_are_accepted(shared_dir: Path, request_file: Path) -> None:
    """Posted to the service of their hook; hooks this service does not answer
    (appointment-book, encounter-*, the kit's made-up fancy-structure) are posted with
    the order-sign hook name to prove the envelope and context parse."""
    body = load_json(request_file)
    client = make_app().test_client()
    hook = body["hook"]
    if hook not in ("order-sign", "order-select", "order-dispatch"):
        body = {
            **body,
            "hook": "order-sign",
            "context": {**body["context"], "draftOrders": {"resourceType": "Bundle", "entry": []}},
        }
        hook = "order-sign"
    response = client.post(
        f"/cds-services/infusion-pump-coverage-{hook}",
        data=json.dumps(body),
        content_type="application/json",
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"cards": []}
    validate_cds_response(response.get_json(), hook=hook)  # none of them orders an infusion pump
