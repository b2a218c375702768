"""``--rpc dossier=kiosk_fleet_rpc:make_dossier_service`` for the kiosk's end-to-end test: the fleet
gateway's dossier service over its demo registry (invented dossiers)."""

from __future__ import annotations

from fleet.gateway import DossierService, GatewayConfig, build_dossier_service


def make_dossier_service() -> DossierService:
    return build_dossier_service(GatewayConfig())
