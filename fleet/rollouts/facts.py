"""Read the facts a rollout needs from the fleet database: which devices a selector picks and
each targeted device's online state and latest OTA report (``device_ota``, fleet/otastate.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select

from fleet.db import chunks, device_ota, devices
from fleet.rollouts.plan import DeviceFact, Selector


def labels(row: Mapping[str, Any]) -> dict[str, str]:
    """The labels a selector matches: ``id``, ``role``, ``version`` and string members of the
    device's reported ``site``/``labels`` status, when present."""
    out = {"id": str(row["id"])}
    for key in ("role", "version"):
        if row.get(key):
            out[key] = str(row[key])
    status = row.get("status")
    if isinstance(status, Mapping):
        if isinstance(status.get("site"), str):
            out["site"] = status["site"]
        extra = status.get("labels")
        if isinstance(extra, Mapping):
            out.update({str(k): v for k, v in extra.items() if isinstance(v, str)})
    return out


def select_devices(engine: Engine, selector: Selector) -> dict[str, str | None]:
    """Devices matching ``selector`` -> the version each reports running."""
    with engine.connect() as conn:
        rows = conn.execute(select(devices.c.id, devices.c.role, devices.c.version, devices.c.status)).all()
    return {row.id: row.version for row in rows if selector.matches(labels(dict(row._mapping)))}


def _moment(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def device_facts(engine: Engine, release: str, names: Sequence[str]) -> dict[str, DeviceFact]:
    """Each device's online state (and since when: its latest status), and its latest OTA report
    about ``release`` (reports about another release are ignored). A device that already runs
    ``release`` and has no report about it counts as committed (it had nothing to install)."""
    out: dict[str, DeviceFact] = {}
    with engine.connect() as conn:
        for part in chunks(list(names)):
            state = {
                row.id: row
                for row in conn.execute(
                    select(devices.c.id, devices.c.online, devices.c.status_at, devices.c.version).where(
                        devices.c.id.in_(part)
                    )
                )
            }
            ota = {
                row.device: row
                for row in conn.execute(
                    select(device_ota.c.device, device_ota.c.kind, device_ota.c.data).where(
                        device_ota.c.device.in_(part)
                    )
                )
            }
            for name in part:
                row = ota.get(name)
                data = row.data if row is not None and isinstance(row.data, Mapping) else {}
                about = row is not None and data.get("to") == release
                device = state.get(name)
                online = bool(device is not None and device.online)
                kind = row.kind if about and row is not None else None
                if kind is None and device is not None and device.version == release:
                    kind = "ota.committed"
                out[name] = DeviceFact(
                    online=online,
                    ota_kind=kind,
                    reason=str(data["reason"]) if about and data.get("reason") else None,
                    online_since=_moment(device.status_at) if online and device is not None else None,
                )
    return out
