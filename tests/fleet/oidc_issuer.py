"""An OpenID Connect issuer for the tests: real RSA keys, discovery, JWKS, authorize, token, end_session.

It approves every authorization request at once as ``issuer.user`` (no login page), checks the
client, the redirect URI and the PKCE verifier at the token endpoint exactly as a real issuer does,
and signs ID and access tokens with its current key. ``rotate()`` makes a new key (new ``kid``)
current; ``mint()`` signs any claims the test wants (expired, wrong audience, another key, ...).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fleet_helpers import wait_for
from jwt.algorithms import RSAAlgorithm

CLIENT_ID = "cityedge-fleet"
CLIENT_SECRET = "issuer-test-client-secret-0123456789"
AUDIENCE = "cityedge-fleet-api"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    method: str
    nonce: str | None
    user: dict[str, Any]


@dataclass
class LocalIssuer:
    """State of the issuer; ``app()`` serves it, ``url`` is set once it listens."""

    url: str = ""
    redirect_uris: list[str] = field(default_factory=list)
    client_secret: str | None = CLIENT_SECRET
    roles_path: str = "realm_access.roles"
    user: dict[str, Any] = field(
        default_factory=lambda: {"sub": "u-1001", "name": "Lan Pham", "email": "lan@city.example"}
    )
    roles: list[str] = field(default_factory=lambda: ["fleet-operators"])
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    current_kid: str = ""
    token_ttl_s: int = 300
    jwks_hits: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)
    logouts: list[dict[str, str]] = field(default_factory=list)
    issued: list[dict[str, Any]] = field(default_factory=list)
    _grants: dict[str, Grant] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate()

    # -- keys and tokens -----------------------------------------------------------------------
    def rotate(self, *, keep_old: bool = True) -> str:
        """Make a new signing key current; the JWKS lists it from now on. Returns its kid."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(4)}"
        with self._lock:
            if not keep_old:
                self.keys.clear()
            self.keys[kid] = new_key()
            self.current_kid = kid
        return kid

    def role_claims(self, roles: list[str]) -> dict[str, Any]:
        """``roles`` placed at ``roles_path`` (a dotted path such as realm_access.roles)."""
        *parents, leaf = self.roles_path.split(".")
        claims: dict[str, Any] = {leaf: roles}
        for part in reversed(parents):
            claims = {part: claims}
        return claims

    def mint(
        self,
        *,
        audience: str | None = AUDIENCE,
        issuer: str | None = None,
        expires_in: int | None = None,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        roles: list[str] | None = None,
        **extra: Any,
    ) -> str:
        """A signed JWT with the user's claims; every part can be made wrong on purpose."""
        now = int(time.time())
        claims: dict[str, Any] = {
            **self.user,
            **self.role_claims(self.roles if roles is None else roles),
            "iss": self.url if issuer is None else issuer,
            "iat": now,
            "exp": now + (self.token_ttl_s if expires_in is None else expires_in),
        }
        if audience is not None:
            claims["aud"] = audience
        claims.update(extra)
        kid = kid or self.current_kid
        signing_key = key or self.keys[kid]
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid})

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            items = list(self.keys.items())
        keys = []
        for kid, key in items:
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    # -- HTTP ------------------------------------------------------------------------------------
    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "end_session_endpoint": f"{self.url}/logout",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }

        @app.get("/jwks")
        def jwks() -> dict[str, Any]:
            self.jwks_hits += 1
            return self.jwks()

        @app.get("/authorize")
        def authorize(request: Request) -> Response:
            q = request.query_params
            if q.get("client_id") != CLIENT_ID:
                raise HTTPException(400, "unknown client_id")
            redirect_uri = q.get("redirect_uri", "")
            if redirect_uri not in self.redirect_uris:
                raise HTTPException(400, f"redirect_uri {redirect_uri!r} is not registered")
            if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
                raise HTTPException(400, "only response_type=code with PKCE S256")
            if "openid" not in q.get("scope", "").split():
                raise HTTPException(400, "scope must include openid")
            code = secrets.token_urlsafe(24)
            self._grants[code] = Grant(
                CLIENT_ID, redirect_uri, q["code_challenge"], "S256", q.get("nonce"), dict(self.user)
            )
            target = f"{redirect_uri}?{urllib.parse.urlencode({'code': code, 'state': q.get('state', '')})}"
            return RedirectResponse(target, status_code=302)

        @app.post("/token")
        async def token(request: Request) -> Response:
            form = {k: v[0] for k, v in urllib.parse.parse_qs((await request.body()).decode()).items()}
            self.token_requests.append(form)
            if not self._client_ok(request, form):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = self._grants.pop(form.get("code", ""), None)
            if grant is None or form.get("grant_type") != "authorization_code":
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            if form.get("redirect_uri") != grant.redirect_uri:
                return JSONResponse({"error": "invalid_grant", "error_description": "redirect_uri"}, 400)
            verifier = form.get("code_verifier", "")
            if not verifier or create_s256_code_challenge(verifier) != grant.challenge:
                return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verifier"}, 400)
            id_claims: dict[str, Any] = {"azp": CLIENT_ID}
            if grant.nonce:
                id_claims["nonce"] = grant.nonce
            body = {
                "access_token": self.mint(),
                "id_token": self.mint(audience=CLIENT_ID, **id_claims),
                "token_type": "Bearer",
                "expires_in": self.token_ttl_s,
                "scope": "openid profile email",
            }
            self.issued.append(body)
            return JSONResponse(body, headers={"Cache-Control": "no-store"})

        @app.get("/logout")
        def end_session(request: Request) -> Response:
            params = dict(request.query_params)
            self.logouts.append(params)
            target = params.get("post_logout_redirect_uri")
            if target:
                return RedirectResponse(target, status_code=302)
            return Response("signed out at the issuer", media_type="text/plain")

        return app

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == CLIENT_ID
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            import base64

            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return urllib.parse.unquote(user) == CLIENT_ID and urllib.parse.unquote(password) == (
                self.client_secret
            )
        return form.get("client_id") == CLIENT_ID and form.get("client_secret") == self.client_secret


@contextlib.contextmanager
def serve_on(app: Any, port: int) -> Iterator[str]:
    """Serve ``app`` with uvicorn on loopback ``port`` in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=60, what="HTTP server")  # generous: busy machines
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def running_issuer(**kwargs: Any) -> Iterator[LocalIssuer]:
    """A LocalIssuer served over HTTP on a free loopback port for the duration of the block."""
    from fleet.broker import free_port

    issuer = LocalIssuer(**kwargs)
    port = free_port()
    issuer.url = f"http://127.0.0.1:{port}"  # known before it serves: the discovery document names it
    with serve_on(issuer.app(), port):
        yield issuer
