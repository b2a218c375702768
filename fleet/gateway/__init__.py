"""City-services gateway backends: the ``dossier`` RPC service and where it gets its answers.

- :class:`~fleet.gateway.service.DossierService` — the ``RpcService`` registered as ``dossier``
  (method ``lookup`` ``{"code"}`` → ``protocol.dossier.Dossier`` as a dict);
- :class:`~fleet.gateway.http_backend.HttpDossierBackend` — the city's real dossier service;
- :class:`~fleet.gateway.local_registry.LocalRegistryDossierBackend` — a demo registry file.
"""

from __future__ import annotations

from fleet.gateway.backends import DossierBackend, DossierNotFound, UpstreamUnavailable
from fleet.gateway.http_backend import HttpDossierBackend
from fleet.gateway.local_registry import LocalRegistryDossierBackend, RegistryError
from fleet.gateway.service import DossierService, GatewayConfig, build_dossier_service

__all__ = [
    "DossierBackend",
    "DossierNotFound",
    "DossierService",
    "GatewayConfig",
    "HttpDossierBackend",
    "LocalRegistryDossierBackend",
    "RegistryError",
    "UpstreamUnavailable",
    "build_dossier_service",
]
