"""Device keys and revocations as the fleet reads them from the PKI inventory.

``InventoryKeys`` answers "which keys may sign evidence of device X" (``fleet.evidence`` asks it
for every arriving violation): the unrevoked device certificates of X that hold an Ed25519 key,
read from the certificate PEM the inventory keeps, at every check (one indexed query per
violation), so a revocation applies to the next event. ``open_inventory`` finds the inventory
from the fleet's settings.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import SQLAlchemyError

from fleet.config import FleetConfigError
from fleet.evidence import (
    DeviceKey,
    DeviceKeys,
    EvidenceIntake,
    EvidenceStore,
    EvidenceUnavailable,
    evidence_dir,
)
from fleet.pki_errors import PKIError
from fleet.pki_store import Inventory, InventoryError, IssuedCert, inventory_url
from fleet.pki_x509 import load_cert


class PkiSettingsError(FleetConfigError, PKIError):
    """The fleet was pointed at a PKI inventory it cannot open."""


def open_inventory(pki_dir: Path | None, db_url: str | None) -> Inventory | None:
    """The inventory named by ``db_url``, else the one of the PKI in ``pki_dir``; None for neither."""
    if db_url is None and pki_dir is None:
        return None
    if db_url is None:
        assert pki_dir is not None
        if not (Path(pki_dir) / "pki.json").is_file():
            raise PkiSettingsError(
                f"{pki_dir} holds no city PKI (no pki.json); create one with `cityedge fleet pki init`"
            )
    try:
        return Inventory(db_url or inventory_url(Path(str(pki_dir))))
    except (InventoryError, SQLAlchemyError) as exc:
        raise PkiSettingsError(f"cannot open the PKI inventory: {exc}") from exc


def device_keys(device: str, records: list[IssuedCert]) -> DeviceKeys:
    """Pure: the evidence keys of ``device`` from its inventory records."""
    certs = [r for r in records if r.kind == "device" and r.subject == device]
    live = [r for r in certs if not r.revoked]
    keys: list[DeviceKey] = []
    for record in live:
        if record.cert_pem is None:
            continue
        try:
            public = load_cert(record.cert_pem).public_key()
        except PKIError:
            continue
        if isinstance(public, Ed25519PublicKey):
            keys.append(
                DeviceKey(record.serial, record.fingerprint, public, record.not_before, record.not_after)
            )
    return DeviceKeys(device, issued=len(certs), revoked=bool(certs) and not live, keys=tuple(keys))


class InventoryKeys:
    """``KeyDirectory`` over an ``Inventory``: read for every check, so a revocation counts at once."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def keys(self, device: str) -> DeviceKeys:
        try:
            return device_keys(device, self.inventory.by_subject(device))
        except SQLAlchemyError as exc:
            raise EvidenceUnavailable(
                f"the PKI inventory at {self.inventory.display_url} cannot be read: {exc}"
            ) from exc


def build_intake(data_dir: Path, inventory: Inventory | None) -> EvidenceIntake | None:
    """The arrival check of a fleet whose evidence store is ``DATA_DIR/evidence``; None without
    an inventory (the writer then refuses every violation, saying why)."""
    if inventory is None:
        return None
    return EvidenceIntake(InventoryKeys(inventory), EvidenceStore(evidence_dir(data_dir)))
