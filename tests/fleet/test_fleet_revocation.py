"""A running fleet with a PKI: revoked devices show as revoked, the CRL never goes stale."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fleet_helpers import FleetFactory, MakeDevice, admin_headers, wait_for

from fleet.api import create_app
from fleet.brokerconf import BrokerSecurity, write_broker_files
from fleet.crlkeeper import crl_times
from fleet.pki import CityPKI
from hw.keystore import FileKeyStore
from protocol.timefmt import utc_now


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[CityPKI]:
    pki = CityPKI.init(tmp_path / "pki")
    yield pki
    pki.inventory.dispose()


def enrol(pki: CityPKI, device: str, folder: Path) -> None:
    store = FileKeyStore.create(folder / f"{device}-{len(pki.certificates())}.pem")
    pki.sign_device_csr(store.csr(device), device)


def test_a_revoked_device_shows_as_revoked_not_online(
    make_fleet: FleetFactory, make_device: MakeDevice, pki: CityPKI, tmp_path: Path
) -> None:
    fleet = make_fleet(pki_dir=pki.directory, data_dir=tmp_path / "fleet")
    for device in ("cam-rv-0001", "kiosk-rv-0002"):
        enrol(pki, device, tmp_path)
    stolen = make_device("cam-rv-0001").connect()
    make_device("kiosk-rv-0002", role="kiosk").connect()
    wait_for(lambda: len([d for d in fleet.store.devices() if d["online"]]) == 2, what="both online")

    pki.revoke("cam-rv-0001", "stolen", note="pole 17")
    stolen.status(True)  # a revoked device's retained status may still say online (docs/revocation)
    row = wait_for(lambda: (d := fleet.store.device("cam-rv-0001")) and d["revoked"] and d, what="revoked")
    assert row["online"] is False and row["revocation_reason"] == "key_compromise" and row["revoked_at"]

    with TestClient(create_app(fleet), headers=admin_headers(fleet)) as client:
        listed = {d["id"]: d for d in client.get("/api/devices").json()}
        assert listed["cam-rv-0001"]["revoked"] is True and listed["cam-rv-0001"]["online"] is False
        assert listed["kiosk-rv-0002"]["revoked"] is False and listed["kiosk-rv-0002"]["online"] is True
        online = client.get("/api/devices", params={"online": "true"}).json()
        assert [d["id"] for d in online] == ["kiosk-rv-0002"]
        offline = client.get("/api/devices", params={"online": "false"}).json()
        assert [d["id"] for d in offline] == ["cam-rv-0001"]
        assert client.get("/api/devices/cam-rv-0001").json()["revocation_reason"] == "key_compromise"
        assert client.get("/api/stats").json()["devices_online"] == 1
        fragment = client.get("/ui/devices").text
        assert 'badge revoked"' in fragment and fragment.count('badge online">online') == 1
        assert 'badge revoked"' in client.get("/ui/devices/cam-rv-0001").text

    enrol(pki, "cam-rv-0001", tmp_path)  # the unit is replaced: re-enrolled with a new key
    wait_for(lambda: not fleet.store.device("cam-rv-0001")["revoked"], what="re-enrolled")  # type: ignore[index]
    assert fleet.store.device("cam-rv-0001")["online"] is True  # type: ignore[index]


SIGHUP_RECORDER = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: out.write_text(str(int(out.read_text() or 0) + 1)))
out.write_text("0")
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def fake_broker(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A process that counts SIGHUPs (as mosquitto reloads), and its pid file."""
    hups = tmp_path / "hups"
    proc = subprocess.Popen([sys.executable, "-c", SIGHUP_RECORDER, str(hups)])
    wait_for(lambda: hups.exists() and hups.read_text() == "0", what="the recorder")
    pidfile = tmp_path / "mosquitto.pid"
    pidfile.write_text(str(proc.pid))
    yield pidfile, hups
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_the_running_service_resigns_the_crl_before_its_next_update(
    make_fleet: FleetFactory, pki: CityPKI, tmp_path: Path, fake_broker: tuple[Path, Path]
) -> None:
    broker_dir = tmp_path / "broker"
    write_broker_files(pki, broker_dir, BrokerSecurity(device_port=0, fleet_port=0))
    # The CRL was last signed 4 of its 7 days ago: past half its lifetime, 3 days before it goes stale.
    past = CityPKI.load(
        pki.directory,
        clock=lambda: utc_now() - timedelta(days=4),
        build_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    stale_pem = past.crl_pem()
    past.inventory.dispose()
    (broker_dir / "crl.pem").write_bytes(stale_pem)
    before = crl_times(pki.directory / "crl.pem")
    assert before is not None and before.due(utc_now()) and before.next_update > utc_now()

    pidfile, hups = fake_broker
    fleet = make_fleet(
        pki_dir=pki.directory,
        data_dir=tmp_path / "fleet",
        broker_dir=broker_dir,
        broker_reload=f"pidfile:{pidfile}",
        crl_check_s=0.5,
    )
    after = wait_for(
        lambda: (t := crl_times(pki.directory / "crl.pem")) and t.number > before.number and t,
        what="a re-signed CRL",
    )
    assert after.next_update - utc_now() > timedelta(days=6) and not after.due(utc_now())
    wait_for(lambda: hups.read_text() == "1", what="the broker told to reload (after the copy)")
    assert (broker_dir / "crl.pem").read_bytes() == (pki.directory / "crl.pem").read_bytes()
    assert fleet.crl_keeper is not None and fleet.crl_keeper.resigned == 1

    # A CRL signed elsewhere (e.g. `fleet revoke` without --broker-dir) reaches the broker too.
    other = CityPKI.load(pki.directory)
    other.crl_pem()
    other.inventory.dispose()
    wait_for(
        lambda: (broker_dir / "crl.pem").read_bytes() == (pki.directory / "crl.pem").read_bytes(),
        what="the newer CRL copied to the broker",
    )
    wait_for(lambda: hups.read_text() == "2", what="a second reload")
