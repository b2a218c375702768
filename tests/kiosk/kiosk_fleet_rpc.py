"""``--rpc dossier=kiosk_fleet_rpc:make_dossier_service`` for the kiosk's end-to-end tests: the fleet
gateway's dossier service over its demo registry (invented dossiers).

``make_dossier_service_with_bank`` adds one test-only method, ``bank_transfer {"code", "amount"}``,
standing in for the city's bank feed that confirms a VietQR payment by its reference (in production
that feed reaches the gateway directly, never through a device)."""

from __future__ import annotations

from typing import Any

from fleet.gateway import DossierService, GatewayConfig, build_dossier_service


def make_dossier_service() -> DossierService:
    return build_dossier_service(GatewayConfig())


class DossierServiceWithBank:
    def __init__(self) -> None:
        self.service = build_dossier_service(GatewayConfig())

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if method == "bank_transfer" and self.service.submissions is not None:
            receipt = self.service.submissions.confirm_payment(str(params["code"]), int(params["amount"]))
            return {"code": receipt.code, "payment": receipt.payment}
        return self.service.call(method, params, device)


def make_dossier_service_with_bank() -> DossierServiceWithBank:
    return DossierServiceWithBank()
