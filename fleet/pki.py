"""The city PKI: an offline root, an online issuing CA, device / service / broker certificates.

Layout of a PKI directory (created by ``CityPKI.init``, mode 0700, keys 0600)::

    root/root.key        root CA key: MOVE IT OFFLINE after init (USB in a safe); its only use is
                         signing a new issuing CA. ``CityPKI.load`` never reads it.
    root/root.crt        root CA certificate (trust anchor)
    issuing/issuing.key  online issuing CA key (signs device/service/server certs and the CRL)
    issuing/issuing.crt  issuing CA certificate
    issuing/chain.pem    issuing + root
    trust-bundle.pem     root + issuing: what devices and the broker trust
    crl.pem              current CRL, signed by the issuing CA (refreshed by every revoke, and by
                         the fleet service before half its lifetime has passed: ``fleet.crlkeeper``)
    inventory.sqlite     every certificate issued (serial, subject, validity, key, PEM, revoked);
                         or in the database named by ``db_url`` in pki.json (``fleet.pki_store``)
    pki.json             settings (city, CRL lifetime, inventory database URL)

Devices keep their own keys (``hw.keystore``): the PKI signs their CSRs, never sees the keys.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import SQLAlchemyError

from fleet.pki_errors import (
    CertificateExpired,
    CertificateRevoked,
    CSRRejected,
    InvalidCertificate,
    PKIError,
    PKIExists,
    PKINotFound,
    UnknownCertificate,
)
from fleet.pki_revoke import build_crl, parse_reason
from fleet.pki_store import (
    CertKind,
    Inventory,
    InventoryError,
    IssuedCert,
    atomic_write,
    file_lock,
    inventory_url,
)
from fleet.pki_x509 import (
    CLOCK_SKEW,
    DEVICE_URI_PREFIX,
    SERVICE_OU,
    SERVICE_URI_PREFIX,
    LeafSpec,
    ca_certificate,
    cert_pem,
    common_name,
    key_pem,
    leaf_certificate,
    load_cert,
    load_csr,
    load_private_key,
    name_constrained_anchor,
    service_subtree,
    split_hostnames,
    strong_public_key,
)
from protocol.clock import BUILD_TIME, check_clock
from protocol.errors import SignatureError
from protocol.keys import PublicKey, describe_key, fingerprint, verify_data
from protocol.timefmt import format_ts, utc_now
from protocol.topics import DEVICE_ID_RE

__all__ = [
    "CSRRejected",
    "CertificateExpired",
    "CertificateRevoked",
    "CityPKI",
    "InvalidCertificate",
    "IssuedCert",
    "PKIError",
    "PKIExists",
    "PKINotFound",
    "UnknownCertificate",
]

SERVICE_NAME_RE = re.compile(r"^fleet-[a-z0-9][a-z0-9-]{0,56}$")
RESERVED_DEVICE_PREFIX = "fleet-"
MAX_LEAF_DAYS = 825
Clock = Callable[[], datetime]


def _check_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.match(device_id):
        raise CSRRejected(
            f"invalid device id {device_id!r}: use 3-63 lowercase letters, digits and '-' "
            "(e.g. kiosk-hn-btl-0001)"
        )
    if device_id.startswith(RESERVED_DEVICE_PREFIX):
        raise CSRRejected(f"device id {device_id!r} is refused: the 'fleet-' prefix is reserved for services")


class CityPKI:
    """Offline root + online issuing CA in ``directory``. Build with ``init`` or ``load``."""

    def __init__(
        self,
        directory: Path,
        *,
        clock: Clock | None = None,
        build_time: datetime = BUILD_TIME,
        inventory: Inventory | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._clock: Clock = clock or utc_now
        self._build_time = build_time
        try:
            settings = json.loads((self.directory / "pki.json").read_text())
            self.city: str = str(settings["city"])
            self.crl_days: int = int(settings.get("crl_days", 7))
            self._issuing_cert = load_cert((self.directory / "issuing" / "issuing.crt").read_bytes())
            self._root_cert = load_cert((self.directory / "root" / "root.crt").read_bytes())
            self._issuing_key = load_private_key((self.directory / "issuing" / "issuing.key").read_bytes())
        except FileNotFoundError as exc:
            raise PKINotFound(
                f"no city PKI in {self.directory} (missing {Path(exc.filename).name}); "
                "create one with: cityedge fleet pki init --dir DIR"
            ) from exc
        except (ValueError, KeyError) as exc:
            raise PKIError(f"the PKI settings in {self.directory}/pki.json are damaged") from exc
        try:
            self.inventory = inventory or Inventory(inventory_url(self.directory))
        except (InventoryError, SQLAlchemyError) as exc:
            raise PKIError(f"the certificate inventory of {self.directory} cannot be opened: {exc}") from exc

    # ---- creation -------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        city: str = "Hanoi",
        root_days: int = 7300,
        issuing_days: int = 1825,
        crl_days: int = 7,
        clock: Clock | None = None,
        build_time: datetime = BUILD_TIME,
        db_url: str | None = None,
    ) -> CityPKI:
        """Create root and issuing CAs in ``directory`` (which must not hold a PKI yet).

        ``db_url`` (e.g. ``postgresql+psycopg://...``) keeps the certificate inventory in that
        database instead of ``inventory.sqlite``; it is written to pki.json (mode 0600)."""
        directory = Path(directory)
        if (directory / "pki.json").exists():
            raise PKIExists(f"{directory} already holds a city PKI; refusing to overwrite it")
        if issuing_days > root_days:
            raise PKIError("the issuing CA cannot outlive the root CA (issuing_days > root_days)")
        now = check_clock((clock or utc_now)(), build_time)
        org = f"cityedge {city}"
        for sub in (directory, directory / "root", directory / "issuing"):
            sub.mkdir(parents=True, exist_ok=True)
            os.chmod(sub, 0o700)
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = ca_certificate(
            subject_cn=f"cityedge {city} Root CA",
            org=org,
            key=root_key,
            issuer=None,
            issuer_key=root_key,
            not_before=now - CLOCK_SKEW,
            not_after=now + timedelta(days=root_days),
            path_length=1,
        )
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing = ca_certificate(
            subject_cn=f"cityedge {city} Issuing CA 1",
            org=org,
            key=issuing_key,
            issuer=root,
            issuer_key=root_key,
            not_before=now - CLOCK_SKEW,
            not_after=now + timedelta(days=issuing_days),
            path_length=0,
        )
        atomic_write(directory / "root" / "root.key", key_pem(root_key), 0o600)
        atomic_write(directory / "root" / "root.crt", cert_pem(root))
        atomic_write(directory / "issuing" / "issuing.key", key_pem(issuing_key), 0o600)
        atomic_write(directory / "issuing" / "issuing.crt", cert_pem(issuing))
        atomic_write(directory / "issuing" / "chain.pem", cert_pem(issuing) + cert_pem(root))
        atomic_write(directory / "trust-bundle.pem", cert_pem(root) + cert_pem(issuing))
        settings: dict[str, object] = {"city": city, "crl_days": crl_days, "created": format_ts(now)}
        if db_url:
            settings["db_url"] = db_url
        mode = 0o600 if db_url else 0o644  # a database URL may hold a password
        atomic_write(directory / "pki.json", json.dumps(settings, indent=2).encode(), mode)
        pki = cls(directory, clock=clock, build_time=build_time)
        pki.crl_pem()
        return pki

    @classmethod
    def load(
        cls, directory: Path, *, clock: Clock | None = None, build_time: datetime = BUILD_TIME
    ) -> CityPKI:
        """Open an existing PKI (the root key is not needed and may be offline).

        ``clock`` (default: system UTC) must not be before ``build_time`` (ClockNotSet): the CA
        refuses to date certificates and CRLs with an unsynced clock."""
        return cls(directory, clock=clock, build_time=build_time)

    # ---- public material ------------------------------------------------------------------
    @property
    def org(self) -> str:
        return f"cityedge {self.city}"

    def root_cert_pem(self) -> bytes:
        return cert_pem(self._root_cert)

    def issuing_cert_pem(self) -> bytes:
        return cert_pem(self._issuing_cert)

    def trust_bundle_pem(self) -> bytes:
        """Root + issuing CA: what devices and the broker trust (``cafile``)."""
        return cert_pem(self._root_cert) + cert_pem(self._issuing_cert)

    def ca_not_after(self) -> dict[str, datetime]:
        return {
            "root": self._root_cert.not_valid_after_utc,
            "issuing": self._issuing_cert.not_valid_after_utc,
        }

    def now(self) -> datetime:
        """The PKI's clock, refused (ClockNotSet) when obviously unsynced."""
        return check_clock(self._clock(), self._build_time)

    # ---- issuing --------------------------------------------------------------------------
    def _validity(self, days: int) -> tuple[datetime, datetime]:
        if not 1 <= days <= MAX_LEAF_DAYS:
            raise PKIError(f"certificate lifetime must be 1..{MAX_LEAF_DAYS} days, not {days}")
        now = self.now()
        not_after = min(now + timedelta(days=days), self._issuing_cert.not_valid_after_utc)
        return now - CLOCK_SKEW, not_after

    def _issue(self, spec: LeafSpec, kind: CertKind) -> x509.Certificate:
        cert = leaf_certificate(spec, org=self.org, issuer=self._issuing_cert, issuer_key=self._issuing_key)
        self.inventory.add(
            IssuedCert(
                serial=cert.serial_number,
                subject=spec.cn,
                kind=kind,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint=fingerprint(spec.public_key),
                key_type=describe_key(spec.public_key),
                issued_at=self.now(),
                cert_pem=cert_pem(cert).decode("ascii"),
            )
        )
        return cert

    def _check_key_not_reused(self, key: PublicKey, device_id: str) -> None:
        for other in self.inventory.by_fingerprint(fingerprint(key)):
            if other.revoked:
                raise CSRRejected(
                    f"this key belonged to a revoked certificate ({other.subject}); "
                    "generate a new key on the device"
                )
            if other.subject != device_id:
                raise CSRRejected(
                    f"this key is already certified for {other.subject!r}: every device needs its own "
                    "key (was the device cloned from another's disk image?)"
                )

    def _device_csr(self, csr_pem: bytes | str, device_id: str) -> PublicKey:
        _check_device_id(device_id)
        csr = load_csr(csr_pem)
        cn = common_name(csr.subject)
        if cn != device_id:
            raise CSRRejected(
                f"the request is for {cn!r} but the device id is {device_id!r}; "
                "generate the request on the device with its own id"
            )
        key = strong_public_key(csr)
        self._check_key_not_reused(key, device_id)
        return key

    def _device_cert(self, key: PublicKey, device_id: str, days: int) -> bytes:
        not_before, not_after = self._validity(days)
        spec = LeafSpec(
            cn=device_id,
            public_key=key,
            not_before=not_before,
            not_after=not_after,
            uris=(DEVICE_URI_PREFIX + device_id,),
        )
        return cert_pem(self._issue(spec, "device"))

    def sign_device_csr(self, csr_pem: bytes | str, device_id: str, *, days: int = 365) -> bytes:
        """Sign a device CSR; returns the PEM certificate (CN = device id, clientAuth).

        CSRRejected when the CSR is unreadable or badly signed, its CN is not ``device_id``, the
        id is invalid or reserved, the key is weak, or the key is already another device's.
        """
        key = self._device_csr(csr_pem, device_id)
        return self._device_cert(key, device_id, days)

    def issue_service_identity(self, name: str, *, days: int = 365) -> tuple[bytes, bytes]:
        """Key + certificate for a fleet service (CN ``fleet-...``, OU ``fleet services``,
        clientAuth); PEM bytes."""
        if not SERVICE_NAME_RE.match(name):
            raise PKIError(
                f"invalid service name {name!r}: service identities are 'fleet-' followed by "
                "lowercase letters, digits and '-' (e.g. fleet-ingest)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = self._validity(days)
        spec = LeafSpec(
            cn=name,
            public_key=key.public_key(),
            not_before=not_before,
            not_after=not_after,
            uris=(SERVICE_URI_PREFIX + name,),
            ou=SERVICE_OU,
        )
        return key_pem(key), cert_pem(self._issue(spec, "service"))

    def service_listener_anchor_pem(self) -> bytes:
        """The trust anchor (``cafile``) of the broker's fleet listener: the issuing CA's name and
        key, self-signed, with name constraints that admit fleet service certificates only (subject
        ``O=<city>, OU=fleet services``). A device certificate fails the TLS handshake there, even
        with its whole chain; the issuing CA's CRL still applies. Valid as long as the issuing CA.
        """
        now = self.now()
        anchor = name_constrained_anchor(
            self._issuing_cert,
            self._issuing_key,
            service_subtree(self.org),
            not_before=now - CLOCK_SKEW,
            not_after=self._issuing_cert.not_valid_after_utc,
        )
        return cert_pem(anchor)

    def issue_server_cert(self, hostnames: Sequence[str], *, days: int = 365) -> tuple[bytes, bytes]:
        """Key + serverAuth certificate for the broker; names may be DNS names or IP addresses."""
        if not hostnames:
            raise PKIError("the broker certificate needs at least one host name or IP address")
        dns, ips = split_hostnames(hostnames)
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = self._validity(days)
        spec = LeafSpec(
            cn=hostnames[0],
            public_key=key.public_key(),
            not_before=not_before,
            not_after=not_after,
            server=True,
            dns=dns,
            ips=ips,
        )
        return key_pem(key), cert_pem(self._issue(spec, "server"))

    # ---- checking, renewal, revocation ----------------------------------------------------
    def check_certificate(self, cert_pem_data: bytes | str) -> IssuedCert:
        """The inventory record of a certificate this PKI issued, if valid now.

        InvalidCertificate (unreadable / not ours), UnknownCertificate, CertificateExpired or
        CertificateRevoked otherwise.
        """
        cert = load_cert(cert_pem_data)
        try:
            cert.verify_directly_issued_by(self._issuing_cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise InvalidCertificate("this certificate was not issued by the city issuing CA") from exc
        record = self.inventory.get(cert.serial_number)
        if record is None:
            raise UnknownCertificate(f"certificate serial {cert.serial_number:x} is not in the inventory")
        if record.revoked:
            raise CertificateRevoked(
                f"the certificate of {record.subject} (serial {record.serial:x}) was revoked "
                f"({record.revocation_reason}); the device must be re-enrolled by a technician"
            )
        now = self.now()
        if not record.not_before <= now <= record.not_after:
            raise CertificateExpired(
                f"the certificate of {record.subject} is not valid now (valid "
                f"{format_ts(record.not_before)} .. {format_ts(record.not_after)}); renewal is no longer "
                "possible, re-enrol the device"
            )
        return record

    def renew(
        self,
        csr_pem: bytes | str,
        current_cert_pem: bytes | str,
        *,
        proof: bytes | None = None,
        days: int = 365,
    ) -> bytes:
        """New certificate for the same device while its current one is valid and not revoked.

        The requester must prove it holds the *current* key: either the CSR is for the same key
        (its self-signature is the proof), or ``proof`` is the current key's signature
        (``KeyStore.sign`` / ``hw.keystore.renewal_proof``) over the CSR in DER form.
        The current certificate stays valid until it expires (a device that fails to switch keeps
        working); revoke it by serial if the old key is suspect.
        """
        record = self.check_certificate(current_cert_pem)
        if record.kind != "device":
            raise CSRRejected("only device certificates are renewed this way")
        current_key = strong_public_key(load_cert(current_cert_pem))
        csr = load_csr(csr_pem)
        new_key = strong_public_key(csr)
        if fingerprint(new_key) != fingerprint(current_key):
            if proof is None:
                raise CSRRejected(
                    "renewal with a new key needs a proof: the current key's signature over the new request"
                )
            try:
                verify_data(current_key, proof, csr.public_bytes(serialization.Encoding.DER))
            except SignatureError as exc:
                raise CSRRejected("the renewal proof was not made with the current device key") from exc
        key = self._device_csr(csr_pem, record.subject)
        return self._device_cert(key, record.subject, days)

    def revoke(self, target: int | str, reason: str = "unspecified", *, note: str = "") -> list[IssuedCert]:
        """Revoke a serial (int, or hex string with ``0x``) or every valid certificate of a device
        or service id, then rewrite the CRL. Returns the records revoked now."""
        code = parse_reason(reason)
        if isinstance(target, int):
            records = [r for r in [self.inventory.get(target)] if r is not None]
        elif target.lower().startswith("0x"):
            try:
                serial = int(target, 16)
            except ValueError as exc:
                raise UnknownCertificate(f"{target!r} is not a hexadecimal serial number") from exc
            records = [r for r in [self.inventory.get(serial)] if r is not None]
        else:
            records = self.inventory.by_subject(target)
        if not records:
            raise UnknownCertificate(f"no certificate was issued for {target!r}; check the id or serial")
        now = self.now()
        done = [r for r in records if self.inventory.mark_revoked(r.serial, now, code.name, note)]
        self.crl_pem()
        return [self.inventory.get(r.serial) or r for r in done]

    def crl_pem(self) -> bytes:
        """A fresh CRL (signed by the issuing CA, next update in ``crl_days``), also written to
        ``crl.pem`` in the PKI directory."""
        with file_lock(self.directory / ".crl.lock"):  # the newest state is what lands in crl.pem
            now = self.now()
            crl = build_crl(
                issuer=self._issuing_cert,
                issuer_key=self._issuing_key,
                revoked=self.inventory.revoked(),
                number=self.inventory.next_crl_number(),
                last_update=now - CLOCK_SKEW,
                next_update=now + timedelta(days=self.crl_days),
            )
            atomic_write(self.directory / "crl.pem", crl)
        return crl

    def certificates(self) -> list[IssuedCert]:
        """The inventory of issued certificates (for the audit)."""
        return self.inventory.all()
