"""The demo's security set-up: a city PKI that knows the demo camera's key (so its evidence is
verified at arrival), and an admin API token for the person running the demo (printed once with a
sign-in link; the fleet refuses every request without a credential, on loopback too).

Demo only: the PKI's root key and the token file live in the demo's data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.broker import BrokerConfig

CAMERA = "cam-demo-0001"
TOKEN_FILE = "admin-token"


def pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def prepare_pki(data_dir: Path) -> Path:
    """A city PKI (once) and a certificate for the demo camera's evidence key."""
    from agent.devicekey import load_or_create_key
    from fleet.pki import CityPKI
    from hw.keystore import build_csr

    directory = pki_dir(data_dir)
    pki = CityPKI.load(directory) if (directory / "pki.json").exists() else CityPKI.init(directory)
    camera_dir = data_dir / CAMERA
    camera_dir.mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(camera_dir / "device_key.pem")
    if not any(c.subject == CAMERA and c.kind == "device" and not c.revoked for c in pki.certificates()):
        pki.sign_device_csr(build_csr(key, CAMERA), CAMERA)
    return directory


def prepare_admin_token(db_url: str, data_dir: Path) -> tuple[str, Path]:
    """An admin token for this demo run, kept in DATA_DIR/admin-token (0600) for scripts."""
    from fleet.auth.tokens import create_token

    path = data_dir / TOKEN_FILE
    token = create_token(db_url, "admin", f"demo-admin-{os.getpid()}", "7d")
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, path


# -- the technician's path: a city broker (mTLS) and enrolment on the demo fleet ----------------

CITY_BROKER = "city-broker"
TECH_SITE = "hn-demo"
TECH_DEVICE = "kiosk-hn-demo-0002"


@dataclass(frozen=True)
class CityBroker:
    """The demo's city-configured broker: devices enrolled by a technician connect here over
    mTLS; a bridge carries the device topics both ways to the demo's plain broker, where the
    fleet and the other demo devices are."""

    config: BrokerConfig
    files: Path
    admin: Path

    @property
    def device_url(self) -> str:
        assert self.config.tls is not None
        return f"mqtts://127.0.0.1:{self.config.tls.port}"


def prepare_fleet_keys(data_dir: Path) -> Path:
    """The demo fleet's command-signing key ring (once); the offline root key stays beside it."""
    from fleet.keys_cli import init_keys
    from fleet.signer import keys_dir

    fleet_dir = data_dir / "fleet"
    if not keys_dir(fleet_dir).exists():
        init_keys(fleet_dir, data_dir / "offline" / "fleet-root.pem")
    return fleet_dir


def prepare_city_broker(data_dir: Path, plain_broker_port: int) -> CityBroker:
    """Files and configuration of the city broker (new free ports each run)."""
    from fleet.broker import free_port
    from fleet.brokerconf import SETTINGS_FILE, BrokerSecurity, local_broker_config
    from fleet.pki import CityPKI

    pki = CityPKI.load(pki_dir(data_dir))
    root = data_dir / CITY_BROKER
    admin = root / "admin"
    if not (admin / "cert.pem").exists():
        admin.mkdir(parents=True, exist_ok=True)
        key, cert = pki.issue_service_identity("fleet-admin")
        (admin / "key.pem").write_bytes(key)
        os.chmod(admin / "key.pem", 0o600)
        (admin / "cert.pem").write_bytes(cert)
    security = BrokerSecurity(device_port=free_port(), fleet_port=free_port())
    files = root / "files"
    config = local_broker_config(pki, files, security)
    (files / SETTINGS_FILE).write_text(security.model_dump_json(indent=2))
    config.extra += [
        "# demo only: the city broker and the demo broker share the device topics",
        "connection demo-broker",
        f"address 127.0.0.1:{plain_broker_port}",
        "topic city/v1/devices/# both 1",
        "cleansession false",
        "try_private true",
        "restart_timeout 1 5",
    ]
    return CityBroker(config, files, admin)


def enroll_env(data_dir: Path, city: CityBroker) -> dict[str, str]:
    """What ``fleet.enroll:router_from_env`` reads: the demo fleet then enrols devices and grants
    each one its subtree on the city broker before its certificate is issued."""
    return {
        "CITYEDGE_FLEET_DATA": str((data_dir / "fleet").resolve()),
        "CITYEDGE_PKI_DIR": str(pki_dir(data_dir).resolve()),
        "CITYEDGE_DEVICE_BROKER_URL": city.device_url,
        "CITYEDGE_BROKER_DIR": str(city.files.resolve()),
        "CITYEDGE_BROKER_ADMIN": str(city.admin.resolve()),
    }


def create_claim(data_dir: Path, role: str = "kiosk", site: str = TECH_SITE) -> str:
    """A one-time claim token for the technician's device (what `cityedge fleet claim create` does)."""
    from fleet.claims import ClaimStore

    store = ClaimStore.open(data_dir / "fleet" / "claims.db")
    token = store.create(role, site).token
    assert token is not None
    return token


def technician_lines(cli: str, data_dir: Path, http: str, token: str, io_board: str) -> list[str]:
    """The technician's commands for one more device, each line at most 80 columns."""
    device_dir = data_dir / "tech-device"
    return [
        "Technician: enrol one more device (mTLS, signed commands, I/O board):",
        f"  {cli} provision enroll --claim {token} \\",
        f"    --role kiosk --site {TECH_SITE} --fleet http://{http} \\",
        f"    --device-id {TECH_DEVICE} --system simulated \\",
        f"    --data-dir {device_dir} \\",
        f"    --io-board {io_board}",
        f"  {cli} provision selftest --data-dir {device_dir}",
        f"  {cli} provision label --data-dir {device_dir} \\",
        f"    --out {data_dir / 'label.png'}",
        "Open the cabinet door (the fleet gets cabinet.tamper; selftest then fails):",
        f"  {cli} iob set --state-dir {Path(io_board).parent} tamper=open",
    ]
