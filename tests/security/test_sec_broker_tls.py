"""Who may connect to the city broker: certificates from the city PKI only, valid, not revoked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.pki import CityPKI
from fleet.revocation import KickVia, kick
from hw.keystore import FileKeyStore, renewal_proof
from protocol.topics import Topics

T = Topics()
pytestmark = pytest.mark.timeout(60)


def _identity(sb: Any, folder: Path, cert: bytes, key: bytes) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert)
    (folder / "key.pem").write_bytes(key)
    return sb.identity(folder.name, folder / "cert.pem", folder / "key.pem")


def test_valid_device_connects(secure_broker: Any) -> None:
    secure_broker.client(secure_broker.device("kiosk-hn-0001", "ed25519"))


def test_no_client_certificate_is_refused(secure_broker: Any, conn_refused: type[Exception]) -> None:
    with pytest.raises(conn_refused):
        secure_broker.client(None)


def test_certificate_from_another_ca_is_refused(
    secure_broker: Any, tmp_path: Path, conn_refused: type[Exception]
) -> None:
    rogue = CityPKI.init(tmp_path / "rogue", city="Elsewhere")
    store = FileKeyStore.create(tmp_path / "rogue-dev" / "key.pem", algorithm="p256")
    cert = rogue.sign_device_csr(store.csr("kiosk-hn-0001"), "kiosk-hn-0001")
    (tmp_path / "rogue-dev" / "cert.pem").write_bytes(cert)
    ident = secure_broker.identity("kiosk-hn-0001", tmp_path / "rogue-dev" / "cert.pem", store.path)
    with pytest.raises(conn_refused):
        secure_broker.client(ident)


def test_expired_certificate_is_refused(
    secure_broker: Any, conn_refused: type[Exception], pki_in_the_past: Any
) -> None:
    past = pki_in_the_past(secure_broker.pki, 3)
    folder = secure_broker.root / "ids" / "expired-0001"
    store = FileKeyStore.create(folder / "key.pem", algorithm="p256")
    (folder / "cert.pem").write_bytes(past.sign_device_csr(store.csr("expired-0001"), "expired-0001", days=1))
    ident = secure_broker.identity("expired-0001", folder / "cert.pem", folder / "key.pem")
    with pytest.raises(conn_refused):
        secure_broker.client(ident)


def test_broker_server_certificate_cannot_be_used_as_a_client(
    secure_broker: Any, conn_refused: type[Exception]
) -> None:
    key, cert = secure_broker.pki.issue_server_cert(["kiosk-hn-0009"])
    with pytest.raises(conn_refused):
        secure_broker.client(_identity(secure_broker, secure_broker.root / "ids" / "srv", cert, key))


def test_revoked_device_is_cut_off_and_cannot_reconnect(
    secure_broker: Any, inbox_factory: Any, conn_refused: type[Exception]
) -> None:
    sb = secure_broker
    stolen, other = sb.device("kiosk-stolen-01"), sb.device("kiosk-good-002")
    fleet_inbox = inbox_factory()
    fleet = sb.client(sb.fleet, fleet=True, client_id="fleet-w1", inbox=fleet_inbox)
    sb.subscribe(fleet, T.fleet_filters())
    thief = sb.client(stolen, persistent=True)
    good = sb.client(other)
    sb.publish(thief, T.telemetry(stolen.name), b"before")
    assert fleet_inbox.wait_for(T.telemetry(stolen.name), b"before")

    sb.pki.revoke(stolen.name, "stolen")
    # New CRL (SIGHUP: mosquitto 2.0.11 re-reads it, no restart) and the identity deleted from the
    # running broker's access list, which disconnects it at once.
    changes = sb.refresh()
    assert changes.deleted_clients == [stolen.name]
    deadline = time.monotonic() + 5
    while thief.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thief.is_connected()

    # The takeover kick (clean start) also ends its persistent session; reconnecting fails TLS.
    via = KickVia("127.0.0.1", sb.fleet_port, sb.ca, sb.admin.cert, sb.admin.key)
    assert kick(via, stolen.name)
    with pytest.raises(conn_refused):
        sb.client(stolen, client_id="reconnect")
    sb.publish(good, T.telemetry(other.name), b"sentinel")  # others are unaffected
    assert fleet_inbox.wait_for(T.telemetry(other.name), b"sentinel")
    sb.client(other, client_id="still-fine")


def test_renewed_certificate_with_new_key_connects(secure_broker: Any) -> None:
    sb = secure_broker
    old = sb.device("cam-hn-gbt-0042", "p256")
    old_store = FileKeyStore(old.key)
    new_store = FileKeyStore.create(sb.root / "ids" / "renew" / "key.pem", algorithm="ed25519")
    csr = new_store.csr(old.name)
    cert = sb.pki.renew(csr, old.cert.read_bytes(), proof=renewal_proof(old_store, csr))
    (sb.root / "ids" / "renew" / "cert.pem").write_bytes(cert)
    sb.client(sb.identity(old.name, sb.root / "ids" / "renew" / "cert.pem", new_store.path))


def _listed(sb: Any, name: str) -> bool:
    data = json.loads((sb.broker.workdir / "dynsec" / "dynamic-security.json").read_text())
    return name in {c["username"] for c in data["clients"]}


def test_revoked_then_reenrolled_device_connects_again(secure_broker: Any) -> None:
    sb = secure_broker
    first = sb.device("kiosk-hn-0777")
    sb.pki.revoke(first.name, "lost")
    assert sb.refresh().deleted_clients == [first.name]
    assert not _listed(sb, first.name)
    again = FileKeyStore.create(sb.root / "ids" / "again" / "key.pem", algorithm="p256")
    cert = sb.pki.sign_device_csr(again.csr(first.name), first.name)
    (sb.root / "ids" / "again" / "cert.pem").write_bytes(cert)
    assert sb.refresh().created_clients == [first.name]
    assert _listed(sb, first.name)
    client = sb.client(sb.identity(first.name, sb.root / "ids" / "again" / "cert.pem", again.path))
    assert not sb.subscribe(client, [T.commands_req(first.name)])[0].is_failure


def test_stale_crl_locks_every_device_out(
    secure_broker: Any, conn_refused: type[Exception], pki_in_the_past: Any
) -> None:
    """Why the audit calls a CRL past its next update 'high': OpenSSL then refuses everyone."""
    sb = secure_broker
    device = sb.device("kiosk-hn-0002")
    sb.client(device)
    stale = pki_in_the_past(sb.pki, 8).crl_pem()  # next update was yesterday
    sb.config.tls.crlfile.write_bytes(stale)
    sb.broker.reload()
    with pytest.raises(conn_refused):
        sb.client(device, client_id="after-stale-crl")
    sb.config.tls.crlfile.write_bytes(sb.pki.crl_pem())
    sb.broker.reload()
    sb.client(device, client_id="after-fresh-crl")
