"""Sign-in with OpenID Connect: configuration, discovery, token verification and role mapping.

``OidcConfig`` is read from the TOML file given to ``cityedge fleet serve --oidc-config``.
``OidcProvider`` fetches the issuer's discovery document and JWKS (PyJWT's ``PyJWKClient``: the key
set is cached and fetched again when a token names a key id it does not hold, i.e. after a key
rotation at the issuer) and verifies tokens: signature, issuer, audience, expiry (with a small
leeway), then maps the person's identity-provider roles onto the fleet's roles.
``BearerJwtAuthenticator`` accepts ``Authorization: Bearer <JWT>`` (an access token from the
issuer) for scripts and other services; the dashboard's sessions are in ``fleet.auth.session``.

No token or secret is ever logged: failures log the reason and the client address only.
"""

from __future__ import annotations

import importlib
import logging
import re
import ssl
import stat
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import jwt
from fastapi import Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fleet.auth.permissions import ROLES
from fleet.auth.principal import AuthError, Principal, PrincipalKind

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""Signature algorithms a token may use: public-key ones only (never HS* or none)."""

JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
CALLBACK_PATH = "/auth/callback"


class OidcError(Exception):
    """Base of the sign-in errors; the message says what failed and what to do."""


class OidcConfigError(OidcError, ValueError):
    """The OIDC configuration file is missing, unreadable or wrong."""


class IssuerUnavailable(OidcError):
    """The identity provider could not be reached or answered something unusable."""


class TokenRejected(OidcError):
    """A token failed verification; ``reason`` is short, safe to show and to log (no token in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoFleetRole(OidcError):
    """The person signed in, but none of their identity-provider roles maps to a fleet role."""


class RateLimitSettings(BaseModel):
    """Failed sign-ins per client address before it is answered 429 for the rest of the window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: Annotated[int, Field(ge=1)] = 10
    window_s: Annotated[float, Field(gt=0)] = 300.0


def _url(value: str, field: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http(s) URL, not {value!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(
            f"{field} {value!r} uses plain http to another host: use https (http only on 127.0.0.1/localhost)"
        )
    return value


class OidcConfig(BaseModel):
    """Everything the fleet needs to know about the city's identity provider (see docs/security-access.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    """Issuer URL exactly as the tokens' ``iss`` claim has it (Keycloak: https://HOST/realms/REALM)."""
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    """Confidential clients only; prefer ``client_secret_file`` (mode 0600) over putting it here."""
    client_secret_file: Path | None = None
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How a confidential client authenticates at the token endpoint (a public client sends its id)."""
    audience: str | None = None
    """``aud`` that access tokens sent as ``Authorization: Bearer`` must carry (default: client_id)."""
    roles_claim: str = "roles"
    """Dotted path of the claim listing the person's roles, e.g. ``roles`` or ``realm_access.roles``."""
    roles: dict[str, str] = Field(min_length=1)
    """Identity-provider role name -> fleet role. A person holding several takes the first listed here."""
    redirect_url: str
    """This fleet's callback as the browser reaches it: https://FLEET-HOST/auth/callback."""
    post_logout_redirect_url: str | None = None
    """Where the issuer sends the browser after logout (default: /signed-out beside redirect_url)."""
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    ca_file: Path | None = None
    """CA certificate(s) to trust for the issuer's HTTPS (default: the system's)."""
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0
    http_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    jwks_cache_s: Annotated[float, Field(gt=0)] = 300.0
    jwks_refresh_cooldown_s: Annotated[float, Field(ge=0)] = 30.0
    """Least time between two JWKS fetches caused by an unknown key id (a flood of made-up kids
    must not become a flood of requests to the issuer)."""
    idle_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    session_lifetime_s: Annotated[float, Field(gt=0)] = 8 * 3600.0
    cookie_secure: bool | None = None
    """Mark the session cookie Secure. Default: true when redirect_url is https, false for http
    (a browser drops Secure cookies set over plain http, so the http://127.0.0.1 demo cannot use them)."""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256"])
    rate_limit: RateLimitSettings = RateLimitSettings()

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _url(value, "issuer")

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str) -> str:
        _url(value, "redirect_url")
        if not urlsplit(value).path.endswith(CALLBACK_PATH):
            raise ValueError(
                f"redirect_url {value!r} must end in {CALLBACK_PATH} (the fleet's callback route)"
            )
        return value

    @field_validator("post_logout_redirect_url")
    @classmethod
    def _post_logout(cls, value: str | None) -> str | None:
        return None if value is None else _url(value, "post_logout_redirect_url")

    @field_validator("roles_claim")
    @classmethod
    def _claim_path(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(
                f"roles_claim {value!r} must be a claim name or a dotted path like realm_access.roles"
            )
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, str]) -> dict[str, str]:
        for idp_role, fleet_role in value.items():
            if fleet_role not in ROLES:
                raise ValueError(
                    f"roles: {idp_role!r} maps to {fleet_role!r}, which is no fleet role "
                    f"(the roles are: {', '.join(ROLES)})"
                )
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not value:
            raise ValueError(
                f"algorithms must be among {', '.join(ASYMMETRIC_ALGORITHMS)}, not {bad or value}"
            )
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("scopes must include 'openid'")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> OidcConfig:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("give client_secret or client_secret_file, not both")
        return self

    # -- derived values ---------------------------------------------------------------------------
    @property
    def api_audience(self) -> str:
        return self.audience or self.client_id

    @property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return urlsplit(self.redirect_url).scheme == "https"

    @property
    def signed_out_url(self) -> str:
        if self.post_logout_redirect_url is not None:
            return self.post_logout_redirect_url
        return self.redirect_url[: -len(CALLBACK_PATH)] + "/signed-out"

    def secret(self) -> str | None:
        """The client secret (from the file when one is named), or None for a public client."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is None:
            return None
        return read_secret_file(self.client_secret_file)


def read_secret_file(path: Path) -> str:
    """The secret in ``path``; refused unless only its owner may read it (mode 0600 or 0400)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OidcConfigError(f"client_secret_file {path}: cannot read it ({exc.strerror})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise OidcConfigError(
            f"client_secret_file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    if not text:
        raise OidcConfigError(f"client_secret_file {path} is empty")
    return text


def load_oidc_config(path: Path) -> OidcConfig:
    """Read and check the OIDC configuration TOML (raises OidcConfigError naming the bad field)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OidcConfigError(f"--oidc-config {path}: cannot read it ({exc.strerror})") from exc
    toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise OidcConfigError(f"--oidc-config {path}: not valid TOML: {exc}") from exc
    try:
        config = OidcConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise OidcConfigError(f"--oidc-config {path}: {where}: {first['msg']}") from exc
    config.secret()  # a secret file that cannot be used is a start-up error, not a sign-in error
    return config


# -- claims and roles --------------------------------------------------------------------------------
def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``claims`` (``realm_access.roles``), or None if absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def idp_roles(claims: Mapping[str, Any], path: str) -> list[str]:
    """The role names at ``path``: a list of strings, or one string (others ignored)."""
    value = claim_at(claims, path)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def map_role(config: OidcConfig, claims: Mapping[str, Any]) -> str | None:
    """The fleet role for these claims: the first entry of ``config.roles`` the person holds."""
    held = set(idp_roles(claims, config.roles_claim))
    for idp_role, fleet_role in config.roles.items():
        if idp_role in held:
            return fleet_role
    return None


def display_name(claims: Mapping[str, Any]) -> str:
    for key in ("name", "preferred_username", "email", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return value
    return "unknown"


def principal_from_claims(config: OidcConfig, claims: Mapping[str, Any], kind: PrincipalKind) -> Principal:
    """The Principal for verified claims (raises NoFleetRole when no role maps)."""
    role = map_role(config, claims)
    name = display_name(claims)
    if role is None:
        held = idp_roles(claims, config.roles_claim)
        raise NoFleetRole(
            f"{name} is signed in, but none of their roles ({', '.join(held) or 'none'} in claim "
            f"{config.roles_claim!r}) is mapped to a fleet role: ask the identity provider's "
            "administrator to grant one of: " + ", ".join(config.roles)
        )
    return Principal(subject=str(claims["sub"]), role=role, kind=kind, name=name)


# -- the issuer ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document the fleet uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


class OidcProvider:
    """Discovery, JWKS and token verification for one issuer (thread-safe, fetched lazily, cached)."""

    DISCOVERY_TTL_S = 3600.0

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._fetched_at = 0.0
        self._jwks: jwt.PyJWKClient | None = None
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=str(config.ca_file)) if config.ca_file is not None else None
        )

    @property
    def tls_verify(self) -> ssl.SSLContext | bool:
        """What HTTPS clients of the issuer verify against: the configured CA, else the system's."""
        return self._ssl if self._ssl is not None else True

    def http_client(self, *, auth: httpx.Auth | None = None) -> httpx.Client:
        """An httpx client that trusts what the configuration says and times out as configured."""
        return httpx.Client(verify=self.tls_verify, timeout=self.config.http_timeout_s, auth=auth)

    @property
    def discovery_url(self) -> str:
        return self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def metadata(self) -> ProviderMetadata:
        """The issuer's discovery document (cached for an hour; raises IssuerUnavailable)."""
        with self._lock:
            if self._metadata is not None and time.monotonic() - self._fetched_at < self.DISCOVERY_TTL_S:
                return self._metadata
            metadata = self._discover()
            if self._jwks is None or self._jwks.uri != metadata.jwks_uri:
                self._jwks = jwt.PyJWKClient(
                    metadata.jwks_uri,
                    cache_jwk_set=True,
                    lifespan=self.config.jwks_cache_s,
                    timeout=self.config.http_timeout_s,
                    ssl_context=self._ssl,
                    cooldown_duration=self.config.jwks_refresh_cooldown_s,
                )
            self._metadata, self._fetched_at = metadata, time.monotonic()
            return metadata

    def _discover(self) -> ProviderMetadata:
        url = self.discovery_url
        try:
            with self.http_client() as client:
                response = client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IssuerUnavailable(
                f"cannot read the identity provider's discovery document {url}: {exc}; "
                "check that the issuer URL is right and the provider is reachable from the fleet"
            ) from exc
        if not isinstance(doc, dict):
            raise IssuerUnavailable(f"the discovery document {url} is not a JSON object")
        if doc.get("issuer") != self.config.issuer:
            raise IssuerUnavailable(
                f"the discovery document {url} names issuer {doc.get('issuer')!r}, not the configured "
                f"{self.config.issuer!r}: set issuer in the OIDC configuration to exactly that value"
            )
        try:
            return ProviderMetadata(
                issuer=doc["issuer"],
                authorization_endpoint=_url(doc["authorization_endpoint"], "authorization_endpoint"),
                token_endpoint=_url(doc["token_endpoint"], "token_endpoint"),
                jwks_uri=_url(doc["jwks_uri"], "jwks_uri"),
                end_session_endpoint=(
                    _url(doc["end_session_endpoint"], "end_session_endpoint")
                    if doc.get("end_session_endpoint")
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IssuerUnavailable(f"the discovery document {url} is incomplete or wrong: {exc}") from exc

    def _key_client(self) -> jwt.PyJWKClient:
        self.metadata()
        assert self._jwks is not None  # set together with the metadata
        return self._jwks

    def verify(self, token: str, *, audience: str, nonce: str | None = None) -> dict[str, Any]:
        """The claims of ``token`` once signature, issuer, audience and expiry are checked.

        Raises TokenRejected (the reason in words, never the token) or IssuerUnavailable.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("the token is not a well-formed JWT") from exc
        algorithm = header.get("alg")
        if algorithm not in self.config.algorithms:
            raise TokenRejected(f"the token is signed with {algorithm!r}, which the fleet does not accept")
        try:
            signing_key = self._key_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise IssuerUnavailable(f"cannot fetch the identity provider's signing keys: {exc}") from exc
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.InvalidTokenError) as exc:
            raise TokenRejected("the token is signed with a key the identity provider does not list") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key.key,
                algorithms=[algorithm],
                audience=audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("the token has expired: sign in again") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(f"the token is meant for another audience, not {audience!r}") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("the token comes from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("the token's signature does not verify") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejected("the token is not valid yet (check the clocks)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token has no {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"the token is not valid ({type(exc).__name__})") from exc
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRejected("the ID token does not answer this sign-in (nonce differs): start again")
        return claims

    def verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        return self.verify(token, audience=self.config.client_id, nonce=nonce)

    def verify_access_token(self, token: str) -> dict[str, Any]:
        return self.verify(token, audience=self.config.api_audience)


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


class BearerJwtAuthenticator:
    """``Authorization: Bearer <JWT>`` from the issuer -> Principal(kind="oidc").

    None for a request without a bearer JWT (an API token is not a JWT: the next authenticator
    takes it); AuthError 401 for a JWT that fails verification, 403 for one without a fleet role,
    503 while the issuer's keys cannot be fetched.
    """

    def __init__(self, provider: OidcProvider) -> None:
        self.provider = provider

    def __call__(self, request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not JWT_RE.match(token):
            return None
        try:
            claims = self.provider.verify_access_token(token)
            return principal_from_claims(self.provider.config, claims, "oidc")
        except TokenRejected as exc:
            log.info("bearer token refused from %s: %s", client_address(request), exc.reason)
            raise AuthError(401, exc.reason) from exc
        except NoFleetRole as exc:
            log.info("bearer token from %s has no fleet role", client_address(request))
            raise AuthError(403, str(exc)) from exc
        except IssuerUnavailable as exc:
            log.warning("cannot verify a bearer token from %s: %s", client_address(request), exc)
            raise AuthError(503, "sign-in is unavailable: the identity provider cannot be reached") from exc
