"""No device is locked out by time: the running agent renews a certificate that nears its expiry.

An enrolled device whose (one-day) certificate has only a few hours left: the real agent, started
with the configuration enrolment wrote, asks the fleet's HTTPS enrolment API for a new one by itself
(the code of ``cityedge provision renew``), and the new certificate is accepted by the city broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from typer.testing import CliRunner

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from fleet.pki import CityPKI
from hw.keystore import FileKeyStore
from protocol.timefmt import format_ts, utc_now
from provisioning.brokercheck import BrokerTarget, connect_once
from provisioning.cli import build_provision_app
from provisioning.files import DeviceFiles

DEVICE = "cam-hn-rnw-0001"
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def renewal_state(files: DeviceFiles) -> dict[str, Any] | None:
    """The agent's renewal state once it reports a renewal and the next due time."""
    try:
        state: dict[str, Any] = LocalApiClient(files.data_dir, timeout=3.0).status()["certificate"]
    except (LocalApiError, OSError):
        return None
    return state if state["renewed"] and state["renew_at"] else None


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.mark.timeout(120)
def test_the_running_agent_renews_a_certificate_near_its_expiry(
    tmp_path: Path, secure_broker: Any, make_enroll_fleet: Callable[..., Any]
) -> None:
    broker_url = f"mqtts://127.0.0.1:{secure_broker.device_port}"
    fleet = make_enroll_fleet(secure_broker.pki, broker_url, on_enrolling=secure_broker.grant)
    files = DeviceFiles(tmp_path / "device")
    args = ["--role", "camera", "--site", "hn-rnw", "--fleet", fleet.url, "--ca", str(fleet.ca)]
    enrolled = CliRunner().invoke(
        build_provision_app(),
        ["enroll", "--claim", fleet.claim("camera", "hn-rnw"), *args, "--data-dir", str(files.data_dir),
         "--device-id", DEVICE, "--system", "simulated", "--no-start"],
    )  # fmt: skip
    assert enrolled.exit_code == 0, enrolled.output

    # Make it short-lived and nearly spent: a one-day certificate issued 20 hours ago (same key).
    yesterday = CityPKI.load(
        secure_broker.pki.directory,
        clock=lambda: utc_now() - timedelta(hours=20),
        build_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    short = yesterday.sign_device_csr(FileKeyStore(files.key).csr(DEVICE), DEVICE, days=1)
    yesterday.inventory.dispose()
    files.cert.write_bytes(short)
    old = x509.load_pem_x509_certificate(short)
    assert old.not_valid_after_utc - utc_now() < timedelta(hours=5)
    with files.config.open("a") as config:
        config.write("\n[renewal]\ncheck_interval_s = 1\nretry_min_s = 1\nretry_max_s = 5\n")

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(files.config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: serial_of(files.cert) != old.serial_number, 60, "a renewed certificate")
        state = wait_for(lambda: renewal_state(files), 30, "the agent to report the renewal")
        assert state["renewed"] == 1 and state["failures"] == 0 and state["last_error"] is None
    finally:
        proc.terminate()
        proc.wait(15)

    new = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert new.not_valid_after_utc - utc_now() > timedelta(days=300)
    assert new.public_key() == old.public_key(), "renewed for the same device key"
    assert state["not_after"] == format_ts(new.not_valid_after_utc), "the agent reads the new one"
    enrollment = json.loads(files.enrollment.read_text())
    assert enrollment["certificate_not_after"].startswith(f"{new.not_valid_after_utc:%Y-%m-%d}")
    record = secure_broker.pki.inventory.get(new.serial_number)
    assert record is not None and record.subject == DEVICE and not record.revoked
    target = BrokerTarget("127.0.0.1", secure_broker.device_port, DEVICE, files.ca, files.cert, files.key)
    assert "mTLS" in connect_once(target, timeout=10), "the city broker accepts the new certificate"
