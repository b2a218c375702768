"""The PKI inventory on SQLAlchemy Core, on SQLite and PostgreSQL (``db_url`` runs both)."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from fleet.config import FleetConfigError
from fleet.devicekeys import InventoryKeys, open_inventory
from fleet.pki import CityPKI
from fleet.pki_cli import build_app
from fleet.pki_store import Inventory, inventory_url
from hw.keystore import FileKeyStore
from protocol.timefmt import utc_now


def enrol(pki: CityPKI, device: str, folder: Path) -> int:
    store = FileKeyStore.create(folder / f"{device}.pem")
    return x509.load_pem_x509_certificate(pki.sign_device_csr(store.csr(device), device)).serial_number


def test_the_pki_keeps_its_inventory_in_the_database_it_names(db_url: str, tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki", db_url=db_url)
    assert inventory_url(pki.directory) == db_url
    assert not (pki.directory / "inventory.sqlite").exists() or db_url.startswith("sqlite")
    if not db_url.startswith("sqlite"):
        assert (pki.directory / "pki.json").stat().st_mode & 0o777 == 0o600, "the URL may hold a password"
    first = enrol(pki, "cam-hn-pk-0001", tmp_path)
    enrol(pki, "cam-hn-pk-0002", tmp_path)
    reopened = CityPKI.load(pki.directory)
    assert [r.subject for r in reopened.certificates()] == ["cam-hn-pk-0001", "cam-hn-pk-0002"]
    record = reopened.inventory.get(first)
    assert record is not None and record.cert_pem is not None and record.key_type == "ed25519"
    assert record.not_before.tzinfo is not None and record.issued_at <= utc_now()
    assert reopened.inventory.by_fingerprint(record.fingerprint) == [record]

    revoked = reopened.revoke("cam-hn-pk-0001", "stolen", note="case 17")
    assert [r.serial for r in revoked] == [first] and revoked[0].revocation_reason == "key_compromise"
    assert not reopened.inventory.mark_revoked(first, utc_now(), "superseded", ""), "first reason wins"
    crl = x509.load_pem_x509_crl((pki.directory / "crl.pem").read_bytes())
    assert [e.serial_number for e in crl] == [first]
    numbers = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert numbers == reopened.inventory.crl_number() == 2, "init signed CRL 1, the revocation CRL 2"
    gone = reopened.inventory.revoked_devices()
    assert list(gone) == ["cam-hn-pk-0001"] and gone["cam-hn-pk-0001"].reason == "key_compromise"
    keys = InventoryKeys(reopened.inventory)
    assert keys.keys("cam-hn-pk-0001").revoked and not keys.keys("cam-hn-pk-0001").keys
    live = keys.keys("cam-hn-pk-0002")
    assert live.issued == 1 and not live.revoked and len(live.keys) == 1
    assert keys.keys("cam-hn-pk-0404").issued == 0
    reopened.inventory.dispose()
    pki.inventory.dispose()


def test_concurrent_signers_never_share_a_crl_number(db_url: str, tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki", db_url=db_url)

    def number(_i: int) -> int:
        return pki.inventory.next_crl_number()

    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(number, range(40)))
    assert sorted(numbers) == list(range(2, 42))
    pki.inventory.dispose()


def test_a_device_revoked_then_reenrolled_is_not_revoked(db_url: str, tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki", db_url=db_url)
    enrol(pki, "kiosk-hn-pk-0001", tmp_path)
    pki.revoke("kiosk-hn-pk-0001", "lost")
    assert "kiosk-hn-pk-0001" in pki.inventory.revoked_devices()
    store = FileKeyStore.create(tmp_path / "new.pem")
    pki.sign_device_csr(store.csr("kiosk-hn-pk-0001"), "kiosk-hn-pk-0001")
    assert pki.inventory.revoked_devices() == {}
    pki.revoke(pki.inventory.by_subject("kiosk-hn-pk-0001")[0].serial, "superseded")  # the old one again
    assert pki.inventory.revoked_devices() == {}
    pki.inventory.dispose()


def test_move_inventory_to_another_database_with_the_cli(db_url: str, tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki")
    serial = enrol(pki, "cam-hn-mv-0001", tmp_path)
    pki.revoke("cam-hn-mv-0001", "retired")
    pki.inventory.dispose()
    target = db_url if not db_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'moved.sqlite'}"
    runner = CliRunner()
    moved = runner.invoke(build_app(), ["pki", "move-inventory", "--dir", str(pki.directory), "--db", target])
    assert moved.exit_code == 0, moved.output
    assert "1 certificate(s) copied" in moved.output
    assert json.loads((pki.directory / "pki.json").read_text())["db_url"] == target
    again = runner.invoke(build_app(), ["pki", "move-inventory", "--dir", str(pki.directory), "--db", target])
    assert again.exit_code == 2 and "not empty" in again.output
    listed = runner.invoke(build_app(), ["pki", "list", "--dir", str(pki.directory), "--json"])
    assert listed.exit_code == 0, listed.output
    [record] = json.loads(listed.output)
    assert record["serial"] == format(serial, "x") and record["revoked"]
    reloaded = CityPKI.load(pki.directory)
    assert reloaded.inventory.crl_number() == 2 and reloaded.inventory.url == target
    reloaded.inventory.dispose()


LEGACY_SCHEMA = """
CREATE TABLE certs (serial TEXT PRIMARY KEY, subject TEXT NOT NULL, kind TEXT NOT NULL,
    not_before TEXT NOT NULL, not_after TEXT NOT NULL, fingerprint TEXT NOT NULL, key_type TEXT NOT NULL,
    issued_at TEXT NOT NULL, revoked_at TEXT, revocation_reason TEXT, revocation_note TEXT);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO certs VALUES ('1f', 'kiosk-hn-old-0001', 'device', '2025-01-01T00:00:00.000Z',
    '2027-01-01T00:00:00.000Z', 'ab', 'ed25519', '2025-01-01T00:00:01.000Z', NULL, NULL, NULL);
INSERT INTO certs VALUES ('2a', 'kiosk-hn-old-0002', 'device', '2025-01-01T00:00:00.000Z',
    '2027-01-01T00:00:00.000Z', 'cd', 'ed25519', '2025-01-02T00:00:00.000Z',
    '2025-06-01T12:00:00.000Z', 'key_compromise', 'stolen');
INSERT INTO meta VALUES ('crl_number', 41);
"""


def test_an_inventory_file_of_the_previous_release_is_imported(tmp_path: Path) -> None:
    path = tmp_path / "inventory.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
    inventory = Inventory(path)
    old, revoked = inventory.all()
    assert (old.serial, old.subject, old.cert_pem) == (0x1F, "kiosk-hn-old-0001", None)
    assert revoked.revoked_at is not None and revoked.revoked_at.isoformat() == "2025-06-01T12:00:00+00:00"
    assert inventory.next_crl_number() == 42, "CRL numbers go on from the old file"
    assert path.stat().st_mode & 0o777 == 0o600
    keys = InventoryKeys(inventory).keys("kiosk-hn-old-0001")
    assert keys.issued == 1 and keys.keys == (), "no certificate PEM: its evidence cannot be checked yet"
    inventory.dispose()
    assert len(Inventory(path).all()) == 2, "imported once"


def test_the_crl_is_due_at_half_its_lifetime(tmp_path: Path) -> None:
    from fleet.crlkeeper import crl_times

    pki = CityPKI.init(tmp_path / "pki", crl_days=2)
    times = crl_times(pki.directory / "crl.pem")
    assert times is not None
    assert not times.due(utc_now()) and not times.due(times.last_update + timedelta(hours=23))
    assert times.due(times.last_update + timedelta(hours=24, minutes=3))
    assert crl_times(tmp_path / "missing.pem") is None
    pki.inventory.dispose()


def test_a_fleet_pointed_at_no_pki_says_so(tmp_path: Path) -> None:
    assert open_inventory(None, None) is None
    with pytest.raises(FleetConfigError, match="holds no city PKI"):
        open_inventory(tmp_path / "nowhere", None)
    with pytest.raises(FleetConfigError, match="needs SQLite or PostgreSQL"):
        open_inventory(None, "mysql://pki@db/pki")
