"""The fleet application with every router ``fleet serve`` mounts, for the access-control tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fleet.api import create_app
from fleet.auth.oidc import OidcConfig
from fleet.auth.session import install_oidc
from fleet.claims import ClaimStore
from fleet.enroll import EnrollService, enroll_router, keyring_trust
from fleet.evidence import evidence_router_for
from fleet.keys_cli import init_keys
from fleet.pki import CityPKI
from fleet.releases.serve import releases_router
from fleet.service import FleetService

UNREACHABLE_ISSUER = "http://127.0.0.1:9/realms/city"  # sign-in is never completed in these tests


def full_app(
    fleet: FleetService,
    tmp_path: Path,
    *,
    issuer: str = UNREACHABLE_ISSUER,
    signin: Callable[[FastAPI], Any] | None = None,
) -> FastAPI:
    """REST API, dashboard, evidence, enrolment, /tuf, sign-in pages: every route there is.

    ``signin`` installs the dashboard's sign-in (e.g. ``install_token_signin``); by default OIDC
    with ``issuer``."""
    pki = CityPKI.init(tmp_path / "pki", city="Testcity")
    init_keys(tmp_path / "fleet-keys", tmp_path / "offline" / "root.pem")
    enroll = EnrollService(
        pki,
        ClaimStore.open(tmp_path / "fleet-keys" / "claims.db"),
        keyring_trust(tmp_path / "fleet-keys"),
        broker_url="mqtts://127.0.0.1:8883",
    )
    routers = [evidence_router_for(fleet), releases_router(tmp_path / "repo"), enroll_router(enroll)]
    app = create_app(fleet, extra_routers=routers)
    if signin is not None:
        signin(app)
        return app
    config = OidcConfig(
        issuer=issuer,
        client_id="fleet",
        roles={"fleet-viewer": "viewer"},
        redirect_url="http://127.0.0.1:8080/auth/callback",
    )
    install_oidc(app, config)
    return app
