"""The ``dossier`` RPC service (``fleet.rpc.RpcService``) and its configuration."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.gateway.backends import DossierBackend
from fleet.gateway.http_backend import MAX_TIMEOUT_S, HttpDossierBackend
from fleet.gateway.local_registry import DEMO_REGISTRY, LocalRegistryDossierBackend
from fleet.rpc import RpcBadRequest
from protocol.dossier import DOSSIER_CODE_RE, MAX_CODE_LENGTH, METHOD_LOOKUP

log = logging.getLogger(__name__)


def normalise_code(value: Any) -> str:
    """Upper-case, spaces removed; RpcBadRequest unless it looks like AGENCY-YYMMDD-NNNN."""
    if not isinstance(value, str) or not value.strip():
        raise RpcBadRequest('dossier.lookup needs params {"code": "AGENCY-YYMMDD-NNNN"}')
    code = "".join(value.split()).upper()
    if len(code) > MAX_CODE_LENGTH or not DOSSIER_CODE_RE.match(code):
        raise RpcBadRequest("dossier code is not like AGENCY-YYMMDD-NNNN (e.g. 000.00.01.H26-260930-0012)")
    return code


class DossierService:
    """``dossier.lookup {"code"}`` → the dossier as a dict; errors are fleet.rpc RpcError subclasses."""

    def __init__(self, backend: DossierBackend) -> None:
        self.backend = backend

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if method != METHOD_LOOKUP:
            raise RpcBadRequest(f"dossier has no method {method!r} (use {METHOD_LOOKUP})")
        code = normalise_code(params.get("code"))
        dossier = self.backend.lookup(code)
        log.debug("dossier lookup for %s answered (%s)", device, dossier.status)  # no code: it is personal
        return dossier.with_labels().to_dict()


class GatewayConfig(BaseModel):
    """Where the dossier service gets its answers."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "http"] = Field(
        default="local", description="'local': a registry file (demo); 'http': the city's dossier service."
    )
    registry_path: Path = Field(
        default=DEMO_REGISTRY, description="JSON/TOML registry file for the 'local' backend."
    )
    url: str | None = Field(
        default=None, description="Dossier service URL for 'http'; '{code}' in it is replaced by the code."
    )
    timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="Deadline of one upstream call (the kiosk waits 5 s).",
    )
    auth_header_env: str | None = Field(
        default=None, description="Name of the environment variable holding the auth header 'Name: value'."
    )
    verify_tls: bool | str = Field(
        default=True, description="Verify the service's TLS certificate (True) or use this CA bundle path."
    )


def build_dossier_service(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> DossierService:
    """Build the service from config; the auth header is read from the environment, not the file."""
    env = os.environ if environ is None else environ
    if config.backend == "local":
        return DossierService(LocalRegistryDossierBackend(config.registry_path))
    if not config.url:
        raise ValueError("gateway backend 'http' needs url")
    header = None
    if config.auth_header_env:
        header = env.get(config.auth_header_env)
        if not header:
            raise ValueError(f"environment variable {config.auth_header_env} (auth header) is not set")
    return DossierService(HttpDossierBackend(config.url, config.timeout_s, header, verify=config.verify_tls))


def demo_dossier_service() -> DossierService:
    """The demo's ``dossier`` service: the shipped local registry (``fleet serve --rpc dossier=...``)."""
    return build_dossier_service(GatewayConfig())
