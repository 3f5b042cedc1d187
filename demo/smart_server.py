"""A small SMART on FHIR authorization server, built on authlib, in front of a FHIR server:
the EHR side of the documentation app for ``make demo`` and for the app's tests. It
listens on 127.0.0.1 only and keeps everything in memory.

It plays the EHR's side of a SMART App Launch 2.x EHR launch:

- ``[base]/fhir/.well-known/smart-configuration``: its endpoints, PKCE S256;
- ``/authorize``: the authorization code grant with PKCE (S256 required), a consent page
  (Allow / Deny buttons, a plain HTML form), the ``launch`` parameter resolved to the
  launch context registered by ``new_launch``;
- ``/token``: the code exchanged (PKCE verifier checked, public or secret client) for a
  random access token, answered with ``patient``, ``fhirContext``, ``appContext`` and an
  RS256 ``id_token`` (``iss`` its ``issuer``, ``aud`` the client, ``fhirUser``, ``nonce``)
  whose key ``/jwks`` publishes (tests may make it wrong: ``id_token_claims`` and
  ``id_token_header`` are laid over the right ones, and it is still signed RS256);
- ``[base]/fhir/...``: the FHIR server behind, reached only with a token this server
  issued (401 otherwise), forwarded with the FHIR server's own token; addresses in its
  answers are rewritten to ``[base]/fhir``.

- ``/``: a page saying what it is (and, with ``auto_consent``, that it signs everyone in
  as the demo clinician and allows every request without asking, as ``make demo`` runs it).

Everything it saw is kept (``seen``) so tests can check what the app sent.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin, ClientMixin
from authlib.oauth2.rfc7636 import CodeChallenge
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

CONSENT_PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<title>Allow access</title></head><body><h1>Allow the documentation app?</h1>
<p>It asks for: {scope}</p>
<form method=post><button name=decision value=allow id=allow>Allow</button>
<button name=decision value=deny id=deny>Deny</button></form></body></html>"""
ABOUT_PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<title>SMART authorization server</title></head><body><h1>SMART authorization server</h1>
<p>The EHR side of a SMART App Launch: FHIR base (<code>iss</code>) {iss}, in front of
{fhir}. {consent}</p>
<p>Discovery: <a href="{iss}/.well-known/smart-configuration">
{iss}/.well-known/smart-configuration</a></p>
</body></html>"""


@dataclass
class RegisteredClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    # A confidential client with a key: how to read its published JWKS.
    jwks: Callable[[], dict[str, Any]] | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(
            client_secret, self.client_secret
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.jwks is not None:
            return method == "private_key_jwt"
        if self.client_secret:
            return method == "client_secret_basic"
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    launch: dict[str, Any]
    issued: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.issued)


@dataclass
class SmartAuthorizationServer:
    """The running server: its base URL, what it issued and saw."""

    fhir_base: str  # the FHIR server behind
    fhir_token: str  # the FHIR server's own token ("": it needs none)
    base: str = ""
    clients: dict[str, RegisteredClient] = field(default_factory=dict)
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    scopes_supported: list[str] | None = None
    auto_consent: bool = False  # allow every request without showing the consent page
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    # The OpenID Connect issuer its configuration names and its id_tokens carry (None: its
    # FHIR base, ``iss``); ``advertise_issuer`` False leaves it out of the configuration.
    oidc_issuer: str | None = None
    advertise_issuer: bool = True
    # What a test lays over the id_token's claims and header (a value None: left out).
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    id_token_header: dict[str, Any] = field(default_factory=dict)

    @property
    def iss(self) -> str:
        return f"{self.base}/fhir"

    def register(
        self,
        client_id: str,
        redirect_uri: str,
        secret: str | None = None,
        jwks: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.clients[client_id] = RegisteredClient(client_id, redirect_uri, secret, jwks)

    def new_launch(self, context: dict[str, Any]) -> str:
        """A launch id for ``context`` (``patient``, ``fhirContext``, ``appContext``,
        ``fhirUser``), as the EHR would mint when the user opens the app."""
        launch = secrets.token_urlsafe(16)
        self.launches[launch] = context
        return launch

    def launch_url(self, app_base: str, launch: str) -> str:
        return self.launch_link(f"{app_base}/dtr/launch", launch)

    def launch_link(self, launch_url: str, launch: str) -> str:
        """``launch_url`` (an app's launch URL) with the ``iss`` and ``launch`` of an EHR
        launch."""
        from urllib.parse import urlencode

        return f"{launch_url}?{urlencode({'iss': self.iss, 'launch': launch})}"


def _jwk(server: SmartAuthorizationServer) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(server.key.public_key()))
    return {**public, "kid": "test-key", "alg": "RS256", "use": "sig"}


def _b64(value: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


def _id_token(server: SmartAuthorizationServer, claims: dict[str, Any]) -> str:
    """``claims`` signed RS256 with the server's key, the test's overrides laid over
    them and over the header (whatever ``alg`` the header then says)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "test-key", **server.id_token_header}
    payload = {**claims, **server.id_token_claims}
    signing_input = ".".join(
        _b64(json.dumps({k: v for k, v in part.items() if v is not None}).encode("utf-8"))
        for part in (header, payload)
    )
    signer = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode('ascii'), server.key))}"


def build_app(server: SmartAuthorizationServer) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secrets.token_hex(16)
    oauth = AuthorizationServer(
        app,
        query_client=lambda client_id: server.clients.get(client_id),
        save_token=lambda token, req: None,
    )

    def authenticate_private_key_jwt(query_client: Any, req: Any) -> RegisteredClient | None:
        """RFC 7523 client assertion, verified against the client's published JWKS."""
        data = req.payload.data
        if data.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return None
        assertion = data.get("client_assertion", "")
        try:
            claimed = jwt.decode(assertion, options={"verify_signature": False})
            client = server.clients.get(claimed.get("iss", ""))
            if client is None or client.jwks is None or claimed.get("sub") != client.client_id:
                return None
            header = jwt.get_unverified_header(assertion)
            key = next(k for k in client.jwks()["keys"] if k.get("kid") == header.get("kid"))
            jwt.decode(
                assertion,
                jwt.PyJWK.from_dict(key).key,
                algorithms=[header["alg"]],
                audience=f"{server.base}/token",
                options={"require": ["exp", "jti"]},
            )
        except (jwt.PyJWTError, StopIteration, KeyError):
            return None
        return client

    oauth.register_client_auth_method("private_key_jwt", authenticate_private_key_jwt)

    class SmartCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "none"]

        def save_authorization_code(self, code: str, req: Any) -> None:
            args = req.payload.data
            launch = server.launches.get(args.get("launch", ""), {})
            server.codes[code] = Code(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.payload.scope,
                user=req.user,
                code_challenge=args.get("code_challenge"),
                code_challenge_method=args.get("code_challenge_method"),
                nonce=args.get("nonce"),
                launch=launch,
            )

        def query_authorization_code(self, code: str, client: RegisteredClient) -> Code | None:
            found = server.codes.get(code)
            if found is None or found.client_id != client.client_id:
                return None
            if time.time() - found.issued > 60:
                return None
            return found

        def delete_authorization_code(self, authorization_code: Code) -> None:
            server.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> str:
            return authorization_code.user

        def save_token(self, token: dict[str, Any]) -> None:
            code: Code = self.request.authorization_code
            launch = code.launch
            token["patient"] = launch.get("patient")
            if launch.get("fhirContext") is not None:
                token["fhirContext"] = launch["fhirContext"]
            if launch.get("appContext") is not None:
                token["appContext"] = launch["appContext"]
            now = int(time.time())
            token["id_token"] = _id_token(
                server,
                {
                    "iss": server.oidc_issuer or server.iss,  # the configuration's issuer
                    "sub": code.user,
                    "aud": code.client_id,
                    "iat": now,
                    "exp": now + 300,
                    "nonce": code.nonce,
                    "fhirUser": launch.get("fhirUser", code.user),
                },
            )
            server.tokens[token["access_token"]] = {
                "scope": code.scope,
                "patient": token["patient"],
            }

    oauth.register_grant(SmartCodeGrant, [CodeChallenge(required=True)])

    @app.before_request
    def remember() -> None:
        server.seen.append({"method": request.method, "path": request.full_path})

    @app.get("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> Response:
        issuer = {"issuer": server.oidc_issuer or server.iss} if server.advertise_issuer else {}
        return jsonify(
            {
                **issuer,
                "authorization_endpoint": f"{server.base}/authorize",
                "token_endpoint": f"{server.base}/token",
                "jwks_uri": f"{server.base}/jwks",
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "private_key_jwt",
                    "client_secret_basic",
                    "none",
                ],
                "scopes_supported": server.scopes_supported
                or [
                    "launch",
                    "openid",
                    "fhirUser",
                    "patient/*.rs",
                    "patient/QuestionnaireResponse.cu",
                ],
                "capabilities": [
                    "launch-ehr",
                    "client-public",
                    "client-confidential-symmetric",
                    "client-confidential-asymmetric",
                    "context-ehr-patient",
                    "sso-openid-connect",
                    "permission-v2",
                ],
            }
        )

    @app.get("/jwks")
    def jwks() -> Response:
        return jsonify({"keys": [_jwk(server)]})

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        user = "Practitioner/" + str(
            server.launches.get(request.args.get("launch", ""), {}).get("user", "clinician")
        )
        grant = oauth.get_consent_grant(end_user=user)
        if server.auto_consent:
            return oauth.create_authorization_response(grant_user=user, grant=grant)
        if request.method == "GET":
            return CONSENT_PAGE.format(scope=html.escape(request.args.get("scope", "")))
        allowed = request.form.get("decision") == "allow"
        return oauth.create_authorization_response(
            grant_user=user if allowed else None, grant=grant
        )

    @app.get("/")
    def about() -> Response:
        consent = (
            "It signs everyone in as the demo clinician and allows every request the app"
            " makes without asking (auto-consent): a demo, not a way to run an EHR."
            if server.auto_consent
            else "It asks the user to allow or deny each request."
        )
        return Response(
            ABOUT_PAGE.format(iss=server.iss, fhir=server.fhir_base, consent=consent),
            mimetype="text/html",
        )

    @app.post("/token")
    def issue_token() -> Any:
        return oauth.create_token_response()

    @app.route("/fhir/<path:rest>", methods=["GET", "POST", "PUT"])
    def fhir(rest: str) -> Response:
        bearer = request.headers.get("Authorization", "")
        if not bearer.startswith("Bearer ") or bearer[7:] not in server.tokens:
            return Response(status=401)
        server.seen[-1]["fhir"] = True
        url = f"{server.fhir_base}/{rest}"
        answer = requests.request(
            request.method,
            url,
            params=request.args,
            data=request.get_data() or None,
            headers={
                **({"Authorization": f"Bearer {server.fhir_token}"} if server.fhir_token else {}),
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
            },
            timeout=10,
        )
        body = answer.content.replace(server.fhir_base.encode(), server.iss.encode())
        response = Response(body, status=answer.status_code, mimetype="application/fhir+json")
        if "Location" in answer.headers:
            response.headers["Location"] = answer.headers["Location"].replace(
                server.fhir_base, server.iss
            )
        return response

    return app


def start_authorization_server(
    fhir_base: str, fhir_token: str, *, port: int = 0, auto_consent: bool = False
) -> tuple[SmartAuthorizationServer, Any]:
    """The server on 127.0.0.1 (``port``, 0: a free one) in a daemon thread, and its
    werkzeug server (``shutdown()`` stops it)."""
    server = SmartAuthorizationServer(
        fhir_base=fhir_base.rstrip("/"), fhir_token=fhir_token, auto_consent=auto_consent
    )
    http = make_server("127.0.0.1", port, build_app(server), threaded=True)
    server.base = f"http://127.0.0.1:{http.server_port}"
    threading.Thread(target=http.serve_forever, name="smart-server", daemon=True).start()
    return server, http


@contextmanager
def serve_authorization_server(
    fhir_base: str, fhir_token: str
) -> Iterator[SmartAuthorizationServer]:
    """The server on 127.0.0.1 (a free port), in a thread, until the block ends."""
    server, http = start_authorization_server(fhir_base, fhir_token)
    try:
        yield server
    finally:
        http.shutdown()
