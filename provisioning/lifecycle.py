"""After enrolment: status, certificate renewal (no site visit), decommission (revoke + wipe)."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.truststore import TrustStore
from hw.keystore import FileKeyStore, KeyStoreError, renewal_proof
from protocol.devauth import signed_bytes
from protocol.timefmt import format_ts
from protocol.trust import TrustError
from provisioning.agentproc import agent_status, stop_agent
from provisioning.enroll import Steps, check_device_clock
from provisioning.errors import CertificateProblem, NotEnrolled, ProvisionError
from provisioning.files import DeviceFiles, Enrollment, load_enrollment, save_enrollment, write_file
from provisioning.fleetclient import FleetClient


def _client(enrollment: Enrollment) -> FleetClient:
    return FleetClient(enrollment.fleet_url, Path(enrollment.fleet_ca) if enrollment.fleet_ca else None)


def _key(files: DeviceFiles) -> FileKeyStore:
    try:
        return FileKeyStore(files.key)
    except KeyStoreError as exc:
        raise NotEnrolled(str(exc)) from exc


def status(files: DeviceFiles) -> dict[str, Any]:
    enrollment = load_enrollment(files)
    out: dict[str, Any] = {**enrollment.to_dict(), "data_dir": str(files.data_dir)}
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        out["certificate_not_after"] = format_ts(cert.not_valid_after_utc)
        out["certificate_serial"] = format(cert.serial_number, "x")
    except (OSError, ValueError) as exc:
        out["certificate_error"] = str(exc)
    try:
        out["fleet_keys_version"] = TrustStore.load(files.trust).version
    except TrustError as exc:
        out["fleet_keys_error"] = str(exc)
    out["agent"] = agent_status(files)
    return out


def _update_trust(files: DeviceFiles, body: dict[str, Any], now: datetime) -> None:
    write_file(files.ca, str(body["trust_bundle_pem"]).encode())
    with contextlib.suppress(TrustError):  # not newer or not acceptable: keep the list in use
        TrustStore.load(files.trust).apply(body["fleet_keys"], now)


def renew(
    files: DeviceFiles, clock: Callable[[], datetime], steps: Steps, *, new_key: bool = False
) -> dict[str, Any]:
    """Ask the fleet for a new certificate, proving possession of the current key."""
    with steps.step("Check the device clock"):
        now = check_device_clock(clock)
    enrollment = load_enrollment(files)
    current = _key(files)
    cert_problem_if_missing(files)
    cert_pem = files.cert.read_text(encoding="ascii")
    body: dict[str, Any] = {"certificate_pem": cert_pem}
    next_path = files.key.with_name(files.key.name + ".next")
    with steps.step("Prepare the certificate request"):
        if new_key:
            next_path.unlink(missing_ok=True)
            key = FileKeyStore.create(next_path)
            csr = key.csr(enrollment.device_id)
            body["proof"] = base64.b64encode(renewal_proof(current, csr)).decode()
        else:
            csr = current.csr(enrollment.device_id)
        body["csr_pem"] = csr.decode("ascii")
    with steps.step(f"Renew with the fleet at {enrollment.fleet_url}"):
        answer = _client(enrollment).post("/api/renew", body)
    with steps.step("Save the new certificate"):
        if new_key:
            os.replace(next_path, files.key)
        write_file(files.cert, str(answer["certificate_pem"]).encode())
        _update_trust(files, answer, now)
        save_enrollment(
            files, replace(enrollment, certificate_not_after=str(answer["certificate_not_after"]))
        )
    return {"device_id": enrollment.device_id, "certificate_not_after": answer["certificate_not_after"]}


def wipe(path: Path) -> None:
    """Overwrite a file with random bytes (fsync'd), then delete it."""
    size = path.stat().st_size
    with open(path, "r+b", buffering=0) as fh:
        fh.write(os.urandom(max(size, 1)))
        os.fsync(fh.fileno())
    path.unlink()


def decommission(
    files: DeviceFiles, clock: Callable[[], datetime], steps: Steps, *, offline: bool = False
) -> dict[str, Any]:
    """Stop the agent, have the fleet revoke this device, wipe keys, certificates and trust."""
    done: list[str] = []
    try:
        enrollment: Enrollment | None = load_enrollment(files)
    except NotEnrolled:
        enrollment = None
    with steps.step("Stop the agent"):
        done.append(stop_agent(files))
    if enrollment is not None and not offline:
        with steps.step(f"Ask the fleet to revoke {enrollment.device_id}"):
            now = check_device_clock(clock)
            cert_pem = files.cert.read_text(encoding="ascii")
            ts = format_ts(now)
            proof = _key(files).sign(signed_bytes("decommission", cert_pem, ts))
            answer = _client(enrollment).post(
                "/api/decommission",
                {"certificate_pem": cert_pem, "ts": ts, "proof": base64.b64encode(proof).decode()},
            )
            serials = ", ".join(answer.get("revoked", []))
            done.append(f"fleet revoked {answer.get('device_id')} (certificates {serials})")
    elif enrollment is not None:
        done.append(
            "fleet NOT told (--offline): ask the operator to run "
            f"`cityedge fleet pki revoke {enrollment.device_id}`"
        )
    with steps.step("Wipe keys, certificates and trust"):
        wiped = files.secrets()
        for path in wiped:
            wipe(path)
        done.extend(f"wiped {path}" for path in wiped)
    if not wiped and enrollment is None:
        raise ProvisionError("nothing to decommission here: no enrolment and no keys in this data dir")
    return {"device_id": enrollment.device_id if enrollment else None, "done": done}


def cert_problem_if_missing(files: DeviceFiles) -> None:
    if not files.cert.exists():
        raise CertificateProblem(f"no device certificate at {files.cert}", "enrol the device first")
