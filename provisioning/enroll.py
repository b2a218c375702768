"""``cityedge provision enroll``: from a blank device to an enrolled one, step by step.

clock -> claim token -> device key (generated here) -> CSR to the fleet -> certificate checked ->
certificate, trust bundle, fleet keys and agent config written -> agent started.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from agent.truststore import TrustStore
from hw.keystore import FileKeyStore, KeyStoreError
from protocol.clock import BUILD_TIME, ClockNotSet, check_clock
from protocol.keys import fingerprint
from protocol.timefmt import format_ts
from protocol.topics import DEVICE_ID_RE
from protocol.trust import RootKey, TrustError
from provisioning.errors import AlreadyEnrolled, CertificateProblem, ClaimProblem, ProvisionError, WrongTime
from provisioning.files import DeviceFiles, Enrollment, save_enrollment, write_agent_config, write_file
from provisioning.fleetclient import FleetClient

ROLE_PREFIX = {"kiosk": "kiosk", "camera": "cam"}


class Steps(Protocol):
    """Progress reporting: ``with steps.step("Create the device key"): ...``."""

    def step(self, title: str) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class EnrollOptions:
    claim: str
    role: str
    site: str
    fleet_url: str
    data_dir: Path
    ca: Path | None = None
    device_id: str | None = None
    start: bool = True
    system_backend: str = "linux"
    io_board: str | None = None
    """Serial port of the cabinet I/O board (written to [iobus] port and peripherals.json)."""


@dataclass(frozen=True)
class ClaimInput:
    token: str
    role: str | None = None
    site: str | None = None
    fleet_url: str | None = None


def check_device_clock(clock: Callable[[], datetime]) -> datetime:
    try:
        return check_clock(clock())
    except ClockNotSet as exc:
        raise WrongTime(
            f"the device clock is wrong: it says {format_ts(clock())}, before this software was built "
            f"({format_ts(BUILD_TIME)})"
        ) from exc


def read_claim(text: str) -> ClaimInput:
    """``TOKEN``, ``@FILE`` (token or QR text in a file) or the QR text ``cityedge:claim?token=...``."""
    value = text.strip()
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClaimProblem(f"cannot read the claim token file {path}: {exc.strerror or exc}") from exc
    if value.startswith("cityedge:claim?"):
        query = parse_qs(urlsplit(value).query)
        first = {k: v[0] for k, v in query.items() if v}
        if "token" not in first:
            raise ClaimProblem("the scanned claim code has no token in it")
        return ClaimInput(first["token"], first.get("role"), first.get("site"), first.get("fleet"))
    if not value or any(c.isspace() for c in value) or len(value) > 256:
        raise ClaimProblem("the claim token is empty or has spaces in it: copy it again in full")
    return ClaimInput(value)


def default_device_id(role: str, site: str, machine_id: Path = Path("/etc/machine-id")) -> str:
    """``kiosk-SITE-XXXXXX`` / ``cam-SITE-XXXXXX``; the suffix comes from the machine id when known."""
    try:
        seed = machine_id.read_text().strip()
        suffix = hashlib.sha256(seed.encode()).hexdigest()[:6] if seed else secrets.token_hex(3)
    except OSError:
        suffix = secrets.token_hex(3)
    device_id = f"{ROLE_PREFIX.get(role, role)}-{site}-{suffix}"
    if not DEVICE_ID_RE.match(device_id):
        raise ProvisionError(
            f"cannot make a device id from role {role!r} and site {site!r}", "pass --device-id"
        )
    return device_id


def _check_claim_matches(claim: ClaimInput, opts: EnrollOptions) -> None:
    for name, scanned, given in (("role", claim.role, opts.role), ("site", claim.site, opts.site)):
        if scanned is not None and scanned != given:
            raise ClaimProblem(f"the claim token is for {name} {scanned!r}, but --{name} is {given!r}")


def _check_certificate(body: dict[str, Any], key: FileKeyStore, device_id: str, now: datetime) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(str(body["certificate_pem"]).encode())
        bundle = x509.load_pem_x509_certificates(str(body["trust_bundle_pem"]).encode())
    except (KeyError, ValueError) as exc:
        raise CertificateProblem("the fleet sent no readable certificate") from exc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [device_id]:
        raise CertificateProblem(
            f"the certificate is not for {device_id} (got {cert.subject.rfc4514_string()})"
        )
    if fingerprint(cert.public_key()) != key.fingerprint():  # type: ignore[arg-type]
        raise CertificateProblem("the certificate is not for this device's key")
    if not any(_issued_by(cert, ca) for ca in bundle):
        raise CertificateProblem("the certificate was not issued by the city CA in the trust bundle")
    if cert.not_valid_before_utc > now:
        raise WrongTime(
            f"the new certificate is not yet valid (valid from {format_ts(cert.not_valid_before_utc)}, "
            f"device clock {format_ts(now)}): the device clock is behind"
        )
    if cert.not_valid_after_utc < now:
        raise CertificateProblem(
            f"the new certificate already expired at {format_ts(cert.not_valid_after_utc)}"
        )
    return str(body["certificate_pem"]).encode()


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _open_key(files: DeviceFiles) -> FileKeyStore:
    try:
        return FileKeyStore.open_or_create(files.key)
    except KeyStoreError as exc:
        raise ProvisionError(str(exc), "remove the damaged key file, or decommission the device") from exc


def enroll(
    opts: EnrollOptions,
    steps: Steps,
    clock: Callable[[], datetime],
    start_agent: Callable[[DeviceFiles], str] | None = None,
) -> dict[str, Any]:
    """Run every enrolment step; returns a summary (what ``--json`` prints)."""
    files = DeviceFiles(opts.data_dir)
    with steps.step("Check the device clock"):
        now = check_device_clock(clock)
    with steps.step("Read the claim token"):
        claim = read_claim(opts.claim)
        _check_claim_matches(claim, opts)
        if files.cert.exists() and files.enrollment.exists():
            raise AlreadyEnrolled(f"this device is already enrolled (see {files.enrollment})")
        client = FleetClient(opts.fleet_url, opts.ca)
        device_id = opts.device_id or default_device_id(opts.role, opts.site)
    with steps.step(f"Create the device key ({files.key})"):
        key = _open_key(files)
        csr = key.csr(device_id).decode("ascii")
    with steps.step(f"Enrol {device_id} with the fleet at {client.url}"):
        body = client.post(
            "/api/enroll",
            {
                "token": claim.token,
                "device_id": device_id,
                "csr_pem": csr,
                "role": opts.role,
                "site": opts.site,
            },
        )
    with steps.step("Check the certificate"):
        cert = _check_certificate(body, key, device_id, check_device_clock(clock))
    with steps.step("Save certificate, trust and agent configuration"):
        enrollment = _save(files, body, cert, opts, device_id, now)
    started = "not started (--no-start)"
    if opts.start and start_agent is not None:
        with steps.step("Start the agent"):
            started = start_agent(files)
    return {
        **enrollment.to_dict(),
        "data_dir": str(files.data_dir),
        "config": str(files.config),
        "agent": started,
    }


def _save(
    files: DeviceFiles, body: dict[str, Any], cert: bytes, opts: EnrollOptions, device_id: str, now: datetime
) -> Enrollment:
    write_file(files.ca, str(body["trust_bundle_pem"]).encode())
    if opts.ca is not None:
        write_file(files.fleet_ca, opts.ca.read_bytes())
    try:
        TrustStore.install(files.trust, RootKey.from_dict(body["fleet_root_key"]), body["fleet_keys"], now)
    except (KeyError, TypeError, TrustError) as exc:
        raise CertificateProblem(
            f"the fleet sent unusable command keys: {exc}", "tell the fleet operator"
        ) from exc
    enrollment = Enrollment(
        device_id=device_id,
        role=opts.role,
        site=opts.site,
        fleet_url=FleetClient(opts.fleet_url, opts.ca).url,
        broker_url=str(body["broker_url"]),
        enrolled_at=format_ts(now),
        certificate_not_after=str(body.get("certificate_not_after") or ""),
        crl_url=body.get("crl_url"),
        fleet_ca=str(files.fleet_ca.resolve()) if opts.ca is not None else None,
    )
    save_enrollment(files, enrollment)
    write_agent_config(
        files, enrollment, simulated_system=opts.system_backend == "simulated", io_board=opts.io_board
    )
    write_file(files.cert, cert)  # last: a certificate on disk means "enrolled"
    return enrollment
