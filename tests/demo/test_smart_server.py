"""The demo EHR authorization server (``demo.smart_server``) over HTTP: its consent page
shows the requested scopes as text, and its discovery names every client authentication
it accepts."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest
import requests

from demo.smart_server import SmartAuthorizationServer, serve_authorization_server

CLIENT_ID = "documentation-app"
REDIRECT = "http://localhost/dtr/callback"


@pytest.fixture
def ehr() -> Iterator[SmartAuthorizationServer]:
    with serve_authorization_server("http://127.0.0.1:9", "unused") as server:
        server.register(CLIENT_ID, REDIRECT)
        yield server


def test_the_consent_page_shows_the_requested_scope_as_text(
    ehr: SmartAuthorizationServer,
) -> None:
    verifier = "v" * 64
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    scope = 'launch openid <script>alert("x")</script>'
    page = requests.get(
        f"{ehr.base}/authorize",
        params={
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT,
            "scope": scope,
            "state": "s",
            "aud": ehr.iss,
            "launch": ehr.new_launch({"patient": "pat-1"}),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        timeout=10,
    )
    assert page.status_code == 200, page.text
    assert "<script>" not in page.text
    assert "launch openid &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text


def test_discovery_names_private_key_jwt(ehr: SmartAuthorizationServer) -> None:
    configuration = requests.get(f"{ehr.iss}/.well-known/smart-configuration", timeout=10).json()
    assert configuration["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt",
        "client_secret_basic",
        "none",
    ]
    assert "client-confidential-asymmetric" in configuration["capabilities"]
