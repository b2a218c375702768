"""Where enrolment puts things in the agent's data directory, and the agent config it writes.

DATA_DIR/device_key.pem     device private key (0600, generated here, never leaves the device)
DATA_DIR/tls/device.crt     device certificate (CN = device id)
DATA_DIR/tls/ca.pem         city trust bundle (root + issuing CA)
DATA_DIR/trust/...          fleet root key + signed fleet key list (agent.truststore)
DATA_DIR/enrollment.json    who this device is: id, role, site, fleet URL, broker URL
DATA_DIR/agent.toml         agent configuration (mqtts, mTLS files, require_signature = true)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from provisioning.errors import NotEnrolled, ProvisionError

DEFAULT_DATA_DIR = Path("/var/lib/cityedge/agent")


@dataclass(frozen=True)
class DeviceFiles:
    data_dir: Path

    @property
    def key(self) -> Path:
        return self.data_dir / "device_key.pem"

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "device.crt"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def trust(self) -> Path:
        return self.data_dir / "trust"

    @property
    def enrollment(self) -> Path:
        return self.data_dir / "enrollment.json"

    @property
    def config(self) -> Path:
        return self.data_dir / "agent.toml"

    @property
    def fleet_ca(self) -> Path:
        return self.data_dir / "tls" / "fleet-ca.pem"

    @property
    def pid(self) -> Path:
        return self.data_dir / "provision-agent.pid"

    @property
    def socket(self) -> Path:
        return self.data_dir / "agent.sock"

    @property
    def peripherals(self) -> Path:
        return self.data_dir / "peripherals.json"

    def secrets(self) -> list[Path]:
        """Files wiped at decommission: key material, identity and trust."""
        found = [self.key, self.cert, self.ca, self.fleet_ca, self.enrollment, self.config, self.pid]
        if self.trust.is_dir():
            found += sorted(p for p in self.trust.iterdir() if p.is_file())
        return [p for p in found if p.exists()]


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    role: str
    site: str
    fleet_url: str
    broker_url: str
    enrolled_at: str
    certificate_not_after: str
    crl_url: str | None = None
    fleet_ca: str | None = None
    """CA file that verifies the fleet's HTTPS certificate (None: the system's CAs)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write (temp file + fsync + rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_enrollment(files: DeviceFiles, enrollment: Enrollment) -> None:
    write_file(files.enrollment, json.dumps(enrollment.to_dict(), indent=1).encode())


def load_enrollment(files: DeviceFiles) -> Enrollment:
    try:
        data = json.loads(files.enrollment.read_text(encoding="utf-8"))
        return Enrollment(**data)
    except FileNotFoundError as exc:
        raise NotEnrolled(f"this device is not enrolled (no {files.enrollment})") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise NotEnrolled(f"{files.enrollment} is damaged ({exc})") from exc


def agent_config(files: DeviceFiles, enrollment: Enrollment) -> dict[str, Any]:
    """The agent configuration of an enrolled device: the documented secure defaults."""
    data_dir = files.data_dir.resolve()
    return {
        "data_dir": str(data_dir),
        "device": {
            "id": enrollment.device_id,
            "role": enrollment.role,
            "site": enrollment.site,
            "key_path": str(files.key.resolve()),
        },
        "mqtt": {
            "broker": enrollment.broker_url,
            "tls": {
                "ca": str(files.ca.resolve()),
                "cert": str(files.cert.resolve()),
                "key": str(files.key.resolve()),
            },
        },
        "commands": {"require_signature": True},
        "system": {"backend": "linux"},
    }


def write_agent_config(
    files: DeviceFiles, enrollment: Enrollment, *, simulated_system: bool = False, io_board: str | None = None
) -> Path:
    """Write ``agent.toml`` and check the agent accepts it (same validation as ``agent run``);
    with ``io_board``, the agent runs the cabinet I/O board on that port and the selftest checks it."""
    config = agent_config(files, enrollment)
    if simulated_system:
        config["system"]["backend"] = "simulated"
    if io_board:
        config["iobus"] = {"port": io_board}
        _merge_peripherals(files, {"ioboard": io_board})
    header = "# Written by `cityedge provision enroll`: enrolled devices verify every command.\n"
    write_file(files.config, (header + tomli_w.dumps(config)).encode(), 0o640)
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        load_config(files.config)
    except ConfigError as exc:
        raise ProvisionError(
            f"this agent version does not accept the configuration written: {exc}",
            "update cityedge on the device (provisioning and agent come from one release)",
        ) from exc
    return files.config


def _merge_peripherals(files: DeviceFiles, update: dict[str, str]) -> None:
    """Add ``update`` to ``peripherals.json`` (what the selftest checks), keeping other entries."""
    current: dict[str, Any] = {}
    if files.peripherals.exists():
        try:
            loaded = json.loads(files.peripherals.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        current = loaded if isinstance(loaded, dict) else {}
    write_file(files.peripherals, json.dumps({**current, **update}, indent=1).encode())
