"""OIDC bearer tokens against an issuer started by the test (real RSA keys, JWKS over HTTP).

Signature, issuer, audience, expiry, role mapping, key rotation at the issuer, the JWKS refresh
cooldown, the failed-sign-in limit (429) and the configuration file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI, Request
from fleet_helpers import serve_http
from hypothesis import given
from hypothesis import strategies as st
from oidc_issuer import AUDIENCE, CLIENT_ID, LocalIssuer, new_key, running_issuer

from fleet.auth.deps import AuthContext, principal_of, require
from fleet.auth.oidc import (
    OidcConfig,
    OidcConfigError,
    claim_at,
    idp_roles,
    load_oidc_config,
    map_role,
)
from fleet.auth.permissions import COMMANDS_SEND, DEVICES_READ
from fleet.auth.principal import Principal
from fleet.auth.ratelimit import SigninLimiter, install_signin_limit
from fleet.auth.session import install_oidc

ROLE_MAP = {"fleet-admins": "admin", "fleet-operators": "operator", "fleet-viewers": "viewer"}


def oidc_config(issuer_url: str, **overrides: Any) -> OidcConfig:
    settings: dict[str, Any] = {
        "issuer": issuer_url,
        "client_id": CLIENT_ID,
        "audience": AUDIENCE,
        "roles_claim": "realm_access.roles",
        "roles": ROLE_MAP,
        "redirect_url": "http://127.0.0.1:9/auth/callback",
        "jwks_refresh_cooldown_s": 0,
    }
    settings.update(overrides)
    return OidcConfig.model_validate(settings)


def api_token_authenticator(request: Request) -> Principal | None:
    """Stands in for the API-token authenticator that follows the OIDC ones."""
    if request.headers.get("authorization") == "Bearer cet_test":
        return Principal(subject="token:test", role="viewer", kind="token", name="test")
    return None


def small_app(config: OidcConfig, failures: int = 5) -> FastAPI:
    app = FastAPI()
    app.state.auth = AuthContext([api_token_authenticator])

    @app.get("/api/whoami", dependencies=[Depends(require(DEVICES_READ))])
    def whoami(request: Request) -> dict[str, str]:
        principal = principal_of(request)
        assert principal is not None
        return {
            "subject": principal.subject,
            "role": principal.role,
            "kind": principal.kind,
            "name": principal.name,
        }

    @app.post("/api/act", dependencies=[Depends(require(COMMANDS_SEND))])
    def act() -> dict[str, bool]:
        return {"done": True}

    install_oidc(app, config)
    install_signin_limit(app, failures, 300)
    return app


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def api(issuer: LocalIssuer) -> Iterator[str]:
    with serve_http(small_app(oidc_config(issuer.url))) as url:
        yield url


def whoami(url: str, token: str) -> httpx.Response:
    return httpx.get(url + "/api/whoami", headers={"Authorization": f"Bearer {token}"})


def test_valid_access_token_maps_role_to_principal(issuer: LocalIssuer, api: str) -> None:
    answer = whoami(api, issuer.mint())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"subject": "u-1001", "role": "operator", "kind": "oidc", "name": "Lan Pham"}
    # The first role of the mapping the person holds wins.
    answer = whoami(api, issuer.mint(roles=["fleet-viewers", "fleet-admins", "unrelated"]))
    assert answer.json()["role"] == "admin"
    answer = whoami(api, issuer.mint(roles=["fleet-viewers"]))
    assert answer.json()["role"] == "viewer"
    # A viewer may read but not send commands.
    refused = httpx.post(
        api + "/api/act", headers={"Authorization": f"Bearer {issuer.mint(roles=['fleet-viewers'])}"}
    )
    assert refused.status_code == 403
    allowed = httpx.post(api + "/api/act", headers={"Authorization": f"Bearer {issuer.mint()}"})
    assert allowed.status_code == 200


def test_token_without_a_fleet_role_is_403(issuer: LocalIssuer, api: str) -> None:
    answer = whoami(api, issuer.mint(roles=["payroll"]))
    assert answer.status_code == 403
    assert "payroll" in answer.json()["detail"] and "fleet-operators" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("wrong_signature", "signature"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("unknown_key", "key"),
        ("hs256", "HS256"),
        ("no_sub", "sub"),
    ],
)
def test_bad_tokens_are_401(issuer: LocalIssuer, api: str, case: str, reason: str) -> None:
    tokens = {
        "expired": lambda: issuer.mint(expires_in=-120),  # beyond the 30 s leeway
        "wrong_signature": lambda: issuer.mint(key=new_key()),  # the issuer's kid, another key
        "wrong_audience": lambda: issuer.mint(audience="another-service"),
        "wrong_issuer": lambda: issuer.mint(issuer="https://sso.elsewhere.example/realms/x"),
        "unknown_key": lambda: issuer.mint(key=new_key(), kid="not-listed"),
        "hs256": lambda: jwt.encode(
            {"sub": "x"}, "secret" * 8, algorithm="HS256", headers={"kid": issuer.current_kid}
        ),
        "no_sub": lambda: _without(issuer, "sub"),
    }
    answer = whoami(api, tokens[case]())
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert reason in answer.json()["detail"]


def _without(issuer: LocalIssuer, claim: str) -> str:
    token = issuer.mint()
    claims = jwt.decode(token, options={"verify_signature": False})
    del claims[claim]
    return jwt.encode(
        claims, issuer.keys[issuer.current_kid], algorithm="RS256", headers={"kid": issuer.current_kid}
    )


def test_token_within_leeway_is_still_accepted(issuer: LocalIssuer, api: str) -> None:
    assert whoami(api, issuer.mint(expires_in=-5)).status_code == 200


def test_api_token_is_left_to_the_next_authenticator(issuer: LocalIssuer, api: str) -> None:
    answer = whoami(api, "cet_test")
    assert answer.status_code == 200
    assert answer.json()["kind"] == "token"
    assert issuer.jwks_hits == 0  # not a JWT: the issuer is not asked


def test_key_rotation_at_the_issuer_is_followed(issuer: LocalIssuer, api: str) -> None:
    assert whoami(api, issuer.mint()).status_code == 200
    hits = issuer.jwks_hits
    assert whoami(api, issuer.mint()).status_code == 200
    assert issuer.jwks_hits == hits  # the key set is cached
    issuer.rotate(keep_old=False)
    answer = whoami(api, issuer.mint())  # a new kid: the fleet fetches the JWKS again
    assert answer.status_code == 200, answer.text
    assert issuer.jwks_hits == hits + 1


def test_unknown_kids_do_not_flood_the_issuer(issuer: LocalIssuer) -> None:
    """Within the refresh cooldown a made-up kid is refused without asking the issuer again."""
    with serve_http(small_app(oidc_config(issuer.url, jwks_refresh_cooldown_s=600), failures=100)) as api:
        assert whoami(api, issuer.mint()).status_code == 200
        hits = issuer.jwks_hits
        for n in range(5):
            assert whoami(api, issuer.mint(key=new_key(), kid=f"made-up-{n}")).status_code == 401
        assert issuer.jwks_hits == hits


def test_issuer_unreachable_is_503_not_401() -> None:
    with running_issuer() as gone:
        url = gone.url
    with serve_http(small_app(oidc_config(url))) as api:
        token = LocalIssuer(url=url).mint()
        answer = whoami(api, token)
    assert answer.status_code == 503
    assert "identity provider" in answer.json()["detail"]


def test_failed_bearer_tokens_are_rate_limited(issuer: LocalIssuer, api: str) -> None:
    expired = issuer.mint(expires_in=-3600)
    for _ in range(5):
        assert whoami(api, expired).status_code == 401
    blocked = whoami(api, expired)
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 300
    # While blocked, this address may not try any credential, a good one included ...
    assert whoami(api, issuer.mint()).status_code == 429
    # ... but requests without credentials are not sign-ins: they get the usual 401.
    assert httpx.get(api + "/api/whoami").status_code == 401


def test_requests_without_credentials_are_not_counted(issuer: LocalIssuer, api: str) -> None:
    for _ in range(20):
        assert httpx.get(api + "/api/whoami").status_code == 401
    assert whoami(api, issuer.mint()).status_code == 200


def test_limiter_window_slides() -> None:
    now = [1000.0]
    limiter = SigninLimiter(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        now[0] += 10
    assert limiter.retry_after("10.0.0.1") == pytest.approx(30)  # first failure at 1000, now 1030
    assert limiter.retry_after("10.0.0.2") is None  # per address
    now[0] += 30
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(10)  # failures at 1010, 1020, 1060


def test_limiter_memory_is_bounded() -> None:
    limiter = SigninLimiter(1, 60, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._seen) == 100


def test_no_token_or_secret_in_logs(issuer: LocalIssuer, api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [
        issuer.mint(),
        issuer.mint(expires_in=-3600),
        issuer.mint(key=new_key()),
        issuer.mint(audience="other"),
        issuer.mint(roles=["nothing"]),
    ]
    for token in tokens:
        whoami(api, token)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "bearer token refused" in text  # failures are logged ...
    for token in tokens:
        for part in token.split("."):  # ... without any part of the token
            assert part not in text


# -- role claims (a parser: any JSON must be handled) -------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
claim_names = st.text(st.characters(blacklist_characters="."), min_size=1, max_size=8)


@given(
    st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    st.lists(claim_names, min_size=1, max_size=3),
)
def test_claim_lookup_never_raises(claims: dict[str, Any], path: list[str]) -> None:
    dotted = ".".join(path)
    roles = idp_roles(claims, dotted)
    assert all(isinstance(r, str) for r in roles)
    config = oidc_config("https://sso.city.example/realms/city", roles_claim=dotted)
    assert map_role(config, claims) in (None, *ROLE_MAP.values())


@given(
    st.lists(claim_names, min_size=1, max_size=4), st.lists(st.sampled_from([*ROLE_MAP, "other"]), max_size=4)
)
def test_roles_are_found_at_their_dotted_path(path: list[str], held: list[str]) -> None:
    claims: dict[str, Any] = {path[-1]: held}
    for part in reversed(path[:-1]):
        claims = {part: claims}
    assert claim_at(claims, ".".join(path)) == held
    config = oidc_config("https://sso.city.example/realms/city", roles_claim=".".join(path))
    expected = next((role for name, role in ROLE_MAP.items() if name in held), None)
    assert map_role(config, claims) == expected


# -- the configuration file -----------------------------------------------------------------------------
GOOD_TOML = """
issuer = "https://sso.city.example/realms/city"
client_id = "cityedge-fleet"
audience = "cityedge-fleet-api"
roles_claim = "realm_access.roles"
redirect_url = "https://fleet.city.example/auth/callback"
client_secret_file = "{secret}"
idle_timeout_s = 600

[roles]
fleet-operators = "operator"
fleet-auditors = "auditor"

[rate_limit]
failures = 5
window_s = 60
"""


def test_config_file_is_loaded(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    path = tmp_path / "oidc.toml"
    path.write_text(GOOD_TOML.format(secret=secret))
    config = load_oidc_config(path)
    assert config.roles == {"fleet-operators": "operator", "fleet-auditors": "auditor"}
    assert config.secret() == "s3cret-value"
    assert config.secure_cookies  # https: Secure cookies
    assert config.signed_out_url == "https://fleet.city.example/signed-out"
    assert config.idle_timeout_s == 600 and config.rate_limit.failures == 5
    assert "s3cret" not in repr(config)


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    os.chmod(secret, 0o644)
    path = tmp_path / "oidc.toml"
    path.write_text(GOOD_TOML.format(secret=secret))
    with pytest.raises(OidcConfigError, match="chmod 600"):
        load_oidc_config(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('fleet-auditors = "auditor"', 'fleet-auditors = "superuser"'), "no fleet role"),
        (("https://sso.city.example", "http://sso.city.example"), "use https"),
        (("/auth/callback", "/callback"), "must end in /auth/callback"),
        (("idle_timeout_s = 600", "idle_timeout_s = 600\nbogus = 1"), "bogus"),
        (('roles_claim = "realm_access.roles"', 'roles_claim = "realm_access..roles"'), "dotted path"),
        (("failures = 5", "failures = 0"), "rate_limit.failures"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    path = tmp_path / "oidc.toml"
    path.write_text(GOOD_TOML.format(secret=secret).replace(*change))
    with pytest.raises(OidcConfigError, match=message):
        load_oidc_config(path)


def test_cookie_secure_choice_is_explicit() -> None:
    assert not oidc_config("http://127.0.0.1:1").secure_cookies  # the http demo cannot keep Secure cookies
    assert oidc_config(
        "http://127.0.0.1:1", redirect_url="https://fleet.example/auth/callback"
    ).secure_cookies
    assert oidc_config("http://127.0.0.1:1", cookie_secure=True).secure_cookies


def test_fleet_serve_refuses_a_bad_oidc_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cityedge.cli import build_app

    path = tmp_path / "oidc.toml"
    path.write_text(GOOD_TOML.format(secret=tmp_path / "missing").replace('"auditor"', '"superuser"'))
    result = CliRunner().invoke(build_app(), ["fleet", "serve", "--oidc-config", str(path)])
    assert result.exit_code == 1
    assert "roles" in result.output and "superuser" in result.output and "no fleet role" in result.output
