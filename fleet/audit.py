"""Security audit of the city PKI, in the spirit of AWS IoT Device Defender audit checks.

Checks (``check`` name, severity):

- ``cert-expiring`` (high < 7 days, medium < N days) / ``cert-expired`` (medium): the newest
  unrevoked certificate of a device, service or broker runs out; renew it.
- ``revoked-but-connected`` (high), ``expired-but-connected`` (medium), ``unknown-connected``
  (medium): from the set of connected ids the caller supplies (fleet registry, broker).
- ``shared-key`` (high): one public key in unrevoked certificates of several identities.
- ``weak-key`` (high): a certificate whose key the PKI would refuse today.
- ``ca-expiring`` (high < 30 days or expired, medium < 180 days for issuing / 365 for root).
- ``crl-stale`` (high: past next update, brokers then refuse every device; medium < 24 h),
  ``crl-outdated`` (high: a revoked serial missing), ``crl-missing`` / ``crl-invalid`` (high).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleet.pki import CityPKI
from fleet.pki_store import IssuedCert
from protocol.keys import ALLOWED_CURVES, MIN_RSA_BITS
from protocol.timefmt import format_ts

Severity = Literal["high", "medium", "low"]
ConnectedSource = Iterable[str] | Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    subject: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {
            "check": self.check,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
        }


def has_high(findings: Sequence[Finding]) -> bool:
    return any(f.severity == "high" for f in findings)


def _by_subject(records: Iterable[IssuedCert]) -> dict[str, list[IssuedCert]]:
    out: dict[str, list[IssuedCert]] = defaultdict(list)
    for rec in records:
        out[rec.subject].append(rec)
    return out


def check_expiry(records: Sequence[IssuedCert], now: datetime, days: int) -> list[Finding]:
    findings: list[Finding] = []
    for subject, certs in sorted(_by_subject(records).items()):
        live = [c for c in certs if not c.revoked]
        if not live:
            continue
        newest = max(live, key=lambda c: c.not_after)
        left = newest.not_after - now
        when = format_ts(newest.not_after)
        if left < timedelta(0):
            msg = f"{newest.kind} certificate expired on {when}; it can no longer connect: re-enrol it"
            findings.append(Finding("cert-expired", "medium", subject, msg))
        elif left < timedelta(days=days):
            severity: Severity = "high" if left < timedelta(days=7) else "medium"
            msg = f"{newest.kind} certificate expires on {when} ({left.days} days); renew it"
            findings.append(Finding("cert-expiring", severity, subject, msg))
    return findings


def check_connected(records: Sequence[IssuedCert], connected: Iterable[str], now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    groups = _by_subject(records)
    for device in sorted(set(connected)):
        certs = groups.get(device, [])
        if not certs:
            msg = "connected but this PKI never issued it a certificate (other CA? inventory lost?)"
            findings.append(Finding("unknown-connected", "medium", device, msg))
        elif all(c.revoked for c in certs):
            msg = (
                "revoked but still connected: reload the broker (SIGHUP) and kick it "
                "(cityedge fleet revoke ... --kick), or restart the broker"
            )
            findings.append(Finding("revoked-but-connected", "high", device, msg))
        elif not any(c.valid_at(now) for c in certs):
            msg = "connected although its certificate has expired (connection older than the expiry)"
            findings.append(Finding("expired-but-connected", "medium", device, msg))
    return findings


def check_shared_keys(records: Sequence[IssuedCert]) -> list[Finding]:
    subjects: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        if not rec.revoked:
            subjects[rec.fingerprint].add(rec.subject)
    findings = []
    for fp, names in sorted(subjects.items()):
        if len(names) > 1:
            msg = f"the same key ({fp[:16]}…) is certified for {', '.join(sorted(names))}: revoke them all"
            findings.append(Finding("shared-key", "high", ",".join(sorted(names)), msg))
    return findings


def _weak(key_type: str) -> bool:
    if key_type == "ed25519":
        return False
    if key_type.startswith("ecdsa-"):
        return key_type.removeprefix("ecdsa-") not in ALLOWED_CURVES
    if key_type.startswith("rsa-"):
        bits = key_type.removeprefix("rsa-")
        return not bits.isdigit() or int(bits) < MIN_RSA_BITS
    return True


def check_weak_keys(records: Sequence[IssuedCert]) -> list[Finding]:
    return [
        Finding("weak-key", "high", r.subject, f"certificate {r.serial:x} has a weak key ({r.key_type})")
        for r in records
        if not r.revoked and _weak(r.key_type)
    ]


def check_cas(not_after: dict[str, datetime], now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    for name, end in sorted(not_after.items()):
        left = end - now
        medium_days = 365 if name == "root" else 180
        if left < timedelta(days=30):
            state = "has expired" if left < timedelta(0) else f"expires in {left.days} days"
            msg = f"the {name} CA {state} ({format_ts(end)}): rotate it now"
            findings.append(Finding("ca-expiring", "high", f"{name}-ca", msg))
        elif left < timedelta(days=medium_days):
            msg = f"the {name} CA expires on {format_ts(end)} ({left.days} days): plan its rotation"
            findings.append(Finding("ca-expiring", "medium", f"{name}-ca", msg))
    return findings


def check_crl(path: Path, pki: CityPKI, now: datetime) -> list[Finding]:
    subject = str(path)
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return [Finding("crl-missing", "high", subject, "no CRL file: the broker cannot check revocations")]
    except ValueError:
        return [Finding("crl-invalid", "high", subject, "the CRL file is not a readable PEM CRL")]
    issuing = x509.load_pem_x509_certificate(pki.issuing_cert_pem()).public_key()
    if not isinstance(issuing, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        return [Finding("crl-invalid", "high", subject, "the issuing CA key type is not supported")]
    if not crl.is_signature_valid(issuing):
        return [Finding("crl-invalid", "high", subject, "the CRL is not signed by the issuing CA")]
    findings: list[Finding] = []
    next_update = crl.next_update_utc
    if next_update is None or next_update < now:
        msg = "the CRL is past its next update: the broker refuses EVERY device; run cityedge fleet pki crl"
        findings.append(Finding("crl-stale", "high", subject, msg))
    elif next_update - now < timedelta(hours=24):
        msg = f"the CRL expires at {format_ts(next_update)}; refresh it (cityedge fleet pki crl, daily cron)"
        findings.append(Finding("crl-stale", "medium", subject, msg))
    listed = {entry.serial_number for entry in crl}
    missing = [r for r in pki.certificates() if r.revoked and r.serial not in listed]
    if missing:
        names = ", ".join(sorted({r.subject for r in missing}))
        msg = f"revoked certificates missing from this CRL ({names}): copy the new CRL and reload the broker"
        findings.append(Finding("crl-outdated", "high", subject, msg))
    return findings


def run_audit(
    pki: CityPKI,
    *,
    connected: ConnectedSource = (),
    expiring_days: int = 30,
    crl_paths: Sequence[Path] = (),
    now: datetime | None = None,
) -> list[Finding]:
    """All checks; ``crl_paths`` (default: the PKI's crl.pem) should include the broker's copy."""
    moment = now or pki.now()
    records = pki.certificates()
    ids = connected() if callable(connected) else connected
    findings = check_expiry(records, moment, expiring_days)
    findings += check_connected(records, ids, moment)
    findings += check_shared_keys(records)
    findings += check_weak_keys(records)
    findings += check_cas(pki.ca_not_after(), moment)
    for path in crl_paths or [pki.directory / "crl.pem"]:
        findings += check_crl(Path(path), pki, moment)
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(findings, key=lambda f: (order[f.severity], f.check, f.subject))
