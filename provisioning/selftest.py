"""``cityedge provision selftest``: is this device ready for service? One check per line.

Each check is ✓ (ok), ✗ (with what to do) or – (not configured). The broker check is a real mTLS
MQTT connection with the device's identity: made by the running agent when there is one (its
link state is read over the local API), made here otherwise.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from provisioning.agentproc import agent_status
from provisioning.brokercheck import BrokerTarget, connect_once
from provisioning.enroll import check_device_clock
from provisioning.errors import ProvisionError
from provisioning.files import DeviceFiles, load_enrollment
from provisioning.peripherals import KINDS, Probe, ioboard_result, load_peripherals, run_probe

MIN_FREE_BYTES = 500 * 1024 * 1024
MAX_USED_PCT = 95.0
RENEW_WITHIN = timedelta(days=30)
IOBOARD_FIX = "check the I/O board's cable and power, and [iobus] port in the agent config"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "fail" | "skip"
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def _fail(name: str, exc: ProvisionError) -> Check:
    return Check(name, "fail", exc.message, exc.hint)


def check_clock(clock: Callable[[], datetime]) -> Check:
    try:
        now = check_device_clock(clock)
    except ProvisionError as exc:
        return _fail("clock", exc)
    return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M} UTC")


def check_disk(data_dir: Path) -> Check:
    target = data_dir if data_dir.exists() else Path("/")
    usage = shutil.disk_usage(target)
    used_pct = 100.0 * usage.used / usage.total if usage.total else 100.0
    detail = f"{usage.free / 1e9:.1f} GB free ({used_pct:.0f}% used)"
    if usage.free < MIN_FREE_BYTES or used_pct > MAX_USED_PCT:
        return Check("disk", "fail", detail, "free some space (old logs, clips) or use a larger card")
    return Check("disk", "ok", detail)


def check_identity(files: DeviceFiles, now: datetime) -> Check:
    try:
        enrollment = load_enrollment(files)
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except ProvisionError as exc:
        return _fail("identity", exc)
    except (OSError, ValueError) as exc:
        return Check("identity", "fail", f"device certificate unreadable: {exc}", "enrol the device again")
    not_after = cert.not_valid_after_utc
    who = f"{enrollment.device_id} ({enrollment.role} at {enrollment.site})"
    detail = f"{who}, certificate until {not_after:%Y-%m-%d}"
    if not_after < now:
        return Check(
            "identity", "fail", detail + ": EXPIRED", "enrol the device again with a new claim token"
        )
    if not_after - now < RENEW_WITHIN:
        return Check("identity", "fail", detail + ": expires soon", "renew it: cityedge provision renew")
    return Check("identity", "ok", detail)


def check_broker(files: DeviceFiles, timeout: float) -> Check:
    try:
        enrollment = load_enrollment(files)
    except ProvisionError as exc:
        return _fail("broker", exc)
    running = agent_status(files)
    if running["running"] and "link" in running:
        link = running["link"]
        if link.get("connected"):
            return Check(
                "broker", "ok", f"agent connected to {link.get('broker')} over mTLS since {link.get('since')}"
            )
        why = link.get("last_error") or "not connected yet"
        return Check(
            "broker",
            "fail",
            f"the agent cannot reach the broker: {why}",
            "check the network; see the agent log",
        )
    from agent.config import load_config, parse_broker_url

    mqtt = load_config(files.config).mqtt
    _scheme, host, port = parse_broker_url(enrollment.broker_url)
    target = BrokerTarget(
        host, port, enrollment.device_id, files.ca, files.cert, files.key, mqtt.session_expiry_s
    )
    try:
        return Check("broker", "ok", connect_once(target, timeout))
    except ProvisionError as exc:
        return _fail("broker", exc)


def check_peripherals(
    files: DeviceFiles, overrides: dict[str, str | None], timeout: float, probes: dict[str, Probe] | None
) -> list[Check]:
    configured = load_peripherals(files.peripherals, overrides)
    checks = []
    for kind in KINDS:
        if kind not in configured:
            checks.append(Check(kind, "skip", "not configured"))
            continue
        agent_view = _agent_ioboard(files) if kind == "ioboard" else None
        if agent_view is not None:
            checks.append(agent_view)
            continue
        result = run_probe(kind, configured[kind], timeout, probes)
        checks.append(Check(kind, "ok" if result.ok else "fail", result.detail, result.fix))
    return checks


def _agent_ioboard(files: DeviceFiles) -> Check | None:
    """The running agent holds the board's port: judge the board from the agent's view of it
    (firmware, heartbeats, last reading); None when no agent answers."""
    from agent.errors import LocalApiError
    from agent.localapi import LocalApiClient

    try:
        state = LocalApiClient(files.data_dir, timeout=3.0).call("iobus_status")
    except LocalApiError:
        return None
    if not isinstance(state, dict):
        return None
    if not state.get("connected"):
        why = state.get("last_error") or "not answering yet"
        return Check("ioboard", "fail", f"the agent cannot talk to the I/O board: {why}", IOBOARD_FIX)
    if not state.get("heartbeats"):
        return Check("ioboard", "fail", "the I/O board has had no heartbeat yet", "wait and run it again")
    result = ioboard_result(state)
    detail = f"{result.detail}; {state['heartbeats']} heartbeats"
    return Check("ioboard", "ok" if result.ok else "fail", detail, result.fix)


def selftest(
    data_dir: Path,
    clock: Callable[[], datetime],
    *,
    peripherals: dict[str, str | None] | None = None,
    timeout: float = 10.0,
    probes: dict[str, Probe] | None = None,
) -> list[Check]:
    files = DeviceFiles(data_dir)
    checks = [check_clock(clock), check_disk(data_dir)]
    checks.append(check_identity(files, clock()))
    checks.append(check_broker(files, timeout))
    checks.extend(check_peripherals(files, peripherals or {}, timeout, probes))
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
