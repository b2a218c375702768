"""Read the facts a rollout needs from the fleet database: which devices a selector picks and
each targeted device's online state and latest OTA report (``device_ota``, fleet/otastate.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def device_facts(engine: Engine, release: str, names: Sequence[str]) -> dict[str, DeviceFact]:
    """Each device's online state and its latest OTA report about ``release`` (reports about
    another release are ignored)."""
    out: dict[str, DeviceFact] = {}
    with engine.connect() as conn:
        for part in chunks(list(names)):
            online = dict(
                conn.execute(select(devices.c.id, devices.c.online).where(devices.c.id.in_(part))).all()
            )
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
                out[name] = DeviceFact(
                    online=bool(online.get(name, False)),
                    ota_kind=row.kind if about and row is not None else None,
                    reason=str(data["reason"]) if about and data.get("reason") else None,
                )
    return out
