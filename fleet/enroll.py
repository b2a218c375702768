"""Enrolment API: a claim token + a CSR in, a device certificate and the fleet's trust out.

``POST /api/enroll``     ``{"token", "device_id"?, "csr_pem", "role", "site"}`` -> certificate,
                         trust bundle, broker URL, fleet key list (+ its root key), CRL URL.
``POST /api/renew``      ``{"certificate_pem", "csr_pem", "proof"?}``: authenticated by the current
                         key (the CSR's own signature for the same key, ``proof`` for a new one).
``POST /api/decommission`` ``{"certificate_pem", "ts", "proof"}``: the device asks to be revoked.
``GET  /api/crl``        the current CRL (PEM).

Errors answer ``{"detail": "..."}`` in words a technician can act on: 401 unknown token,
409 token already used, 410 token expired, 403 wrong role/site or revoked certificate.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from fleet.auth.deps import require
from fleet.auth.permissions import PUBLIC
from fleet.claims import ClaimError, ClaimStore, check_role_site
from fleet.dynsec import BrokerAccessError
from fleet.pki import CityPKI
from fleet.pki_errors import CertificateExpired, CertificateRevoked, CSRRejected, InvalidCertificate, PKIError
from fleet.pki_store import IssuedCert
from fleet.pki_x509 import common_name, load_cert, load_csr, strong_public_key
from fleet.signer import load_keyring
from protocol.clock import ClockNotSet
from protocol.devauth import MAX_AGE_S, signed_bytes
from protocol.errors import SignatureError, TopicError
from protocol.keys import fingerprint, verify_data
from protocol.timefmt import format_ts, parse_ts
from protocol.topics import check_device_id
from protocol.trust import RootKey


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollRequest(_In):
    token: str = Field(min_length=8, max_length=256, description="One-time claim token.")
    device_id: str | None = Field(None, description="Device id; default: the CN of the CSR.")
    csr_pem: str = Field(min_length=1, max_length=16_384, description="PEM CSR made on the device.")
    role: str = Field(description="kiosk or camera; must match the claim.")
    site: str = Field(description="Site code; must match the claim.")


class RenewRequest(_In):
    certificate_pem: str = Field(min_length=1, max_length=16_384, description="The current certificate.")
    csr_pem: str = Field(min_length=1, max_length=16_384, description="CSR for the new certificate.")
    proof: str | None = Field(None, description="Base64 signature of the current key over the CSR (DER).")


class DecommissionRequest(_In):
    certificate_pem: str = Field(min_length=1, max_length=16_384, description="The current certificate.")
    ts: str = Field(description="RFC 3339 time of the request (must be within 5 minutes).")
    proof: str = Field(description="Base64 signature of the device key (protocol.devauth).")


TrustSource = Callable[[], tuple[RootKey, Mapping[str, Any]]]


def keyring_trust(fleet_data_dir: Path) -> TrustSource:
    """Read the fleet root and key list from the key ring at each request (rotations show at once)."""

    def load() -> tuple[RootKey, Mapping[str, Any]]:
        ring = load_keyring(fleet_data_dir)
        return ring.root, ring.key_list

    return load


@dataclass
class EnrollService:
    pki: CityPKI
    claims: ClaimStore
    trust: TrustSource
    broker_url: str
    crl_url: str | None = None
    cert_days: int = 365
    on_revoked: Callable[[list[IssuedCert]], None] | None = field(default=None)
    """Called after a decommission or replacement revoked certificates (e.g. reload the broker)."""
    on_enrolling: Callable[[str], object] | None = field(default=None)
    """Called with the device id before its certificate is signed (``BrokerAccess.grant_device``:
    the city broker refuses identities its access list does not name). BrokerAccessError refuses
    the enrolment with 503 and leaves the claim usable."""

    def _bundle(self, device_id: str, cert_pem: bytes) -> dict[str, Any]:
        root, key_list = self.trust()
        return {
            "device_id": device_id,
            "certificate_pem": cert_pem.decode("ascii"),
            "certificate_not_after": format_ts(load_cert(cert_pem).not_valid_after_utc),
            "trust_bundle_pem": self.pki.trust_bundle_pem().decode("ascii"),
            "broker_url": self.broker_url,
            "fleet_keys": dict(key_list),
            "fleet_root_key": root.to_dict(),
            "crl_url": self.crl_url,
        }

    def _device_id(self, req: EnrollRequest) -> str:
        device_id = req.device_id or common_name(load_csr(req.csr_pem).subject) or ""
        try:
            return check_device_id(device_id)
        except TopicError as exc:
            raise HTTPException(400, str(exc)) from exc

    def _holders(self, device_id: str, csr_pem: str, now: datetime) -> list[IssuedCert]:
        """Valid certificates of ``device_id`` held by another key than the CSR's."""
        new_key = fingerprint(strong_public_key(load_csr(csr_pem)))
        return [
            r
            for r in self.pki.inventory.by_subject(device_id)
            if r.kind == "device" and r.valid_at(now) and r.fingerprint != new_key
        ]

    def enroll(self, req: EnrollRequest) -> dict[str, Any]:
        check_role_site(req.role, req.site)
        device_id = self._device_id(req)
        others = self._holders(device_id, req.csr_pem, self.pki.now())
        claim = self.claims.reserve(req.token, req.role, req.site, device_id)
        try:
            if others and claim.device_id != device_id:
                raise HTTPException(
                    409,
                    f"device id {device_id} is already enrolled on another unit; decommission it first, "
                    f"or create a replacement claim with --device-id {device_id}",
                )
            if self.on_enrolling is not None:
                try:
                    self.on_enrolling(device_id)
                except BrokerAccessError as exc:
                    raise HTTPException(
                        503, f"the broker could not be prepared for {device_id} ({exc}); try again shortly"
                    ) from exc
            cert = self.pki.sign_device_csr(req.csr_pem, device_id, days=self.cert_days)
        except BaseException:
            self.claims.release(claim.token_hash)
            raise
        if others:  # a replacement: the old unit (maybe stolen) is cut off now
            revoked = [r for o in others for r in self.pki.revoke(o.serial, "replaced", note="re-enrolled")]
            self._notify(revoked)
        return self._bundle(device_id, cert)

    def renew(self, req: RenewRequest) -> dict[str, Any]:
        proof = _b64(req.proof) if req.proof is not None else None
        cert = self.pki.renew(req.csr_pem, req.certificate_pem, proof=proof, days=self.cert_days)
        device_id = common_name(load_cert(cert).subject) or ""
        return self._bundle(device_id, cert)

    def decommission(self, req: DecommissionRequest, now: datetime) -> dict[str, Any]:
        record = self.pki.check_certificate(req.certificate_pem)
        try:
            asked = parse_ts(req.ts)
        except (ValueError, OverflowError) as exc:
            raise HTTPException(400, f"ts: {exc}") from exc
        if abs((now - asked).total_seconds()) > MAX_AGE_S:
            raise HTTPException(
                401,
                f"request time {req.ts} is more than 5 minutes from the fleet clock: check the device time",
            )
        key = strong_public_key(load_cert(req.certificate_pem))
        try:
            verify_data(key, _b64(req.proof), signed_bytes("decommission", req.certificate_pem, req.ts))
        except SignatureError as exc:
            raise HTTPException(401, "the request was not signed with the device key") from exc
        revoked = self.pki.revoke(record.subject, "decommissioned", note="decommissioned by the device")
        self._notify(revoked)
        return {"device_id": record.subject, "revoked": [format(r.serial, "x") for r in revoked]}

    def _notify(self, revoked: list[IssuedCert]) -> None:
        if revoked and self.on_revoked is not None:
            self.on_revoked(revoked)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, "proof is not valid base64") from exc


def _http(exc: Exception) -> HTTPException:
    """The HTTP answer for an error from the claim store or the PKI."""
    if isinstance(exc, ClaimError):
        return HTTPException(exc.status, str(exc))
    if isinstance(exc, (CertificateRevoked, CertificateExpired)):
        return HTTPException(403, str(exc))
    if isinstance(exc, InvalidCertificate):
        return HTTPException(401, str(exc))
    if isinstance(exc, CSRRejected):
        return HTTPException(400, str(exc))
    if isinstance(exc, ClockNotSet):
        return HTTPException(503, f"the fleet clock is not set: {exc}")
    return HTTPException(500, f"enrolment failed: {exc}")


_HANDLED = (ClaimError, PKIError, ClockNotSet)


def enroll_router(service: EnrollService, clock: Callable[[], datetime] | None = None) -> APIRouter:
    """The enrolment endpoints; add with ``create_app(..., extra_routers=[enroll_router(svc)])``."""
    router = APIRouter(prefix="/api", tags=["enrolment"])
    now = clock or service.pki.now

    @router.post("/enroll", dependencies=[Depends(require(PUBLIC))])
    def enroll(body: EnrollRequest) -> dict[str, Any]:
        try:
            return service.enroll(body)
        except _HANDLED as exc:
            raise _http(exc) from exc

    @router.post("/renew", dependencies=[Depends(require(PUBLIC))])
    def renew(body: RenewRequest) -> dict[str, Any]:
        try:
            return service.renew(body)
        except _HANDLED as exc:
            raise _http(exc) from exc

    @router.post("/decommission", dependencies=[Depends(require(PUBLIC))])
    def decommission(body: DecommissionRequest) -> dict[str, Any]:
        try:
            return service.decommission(body, now())
        except _HANDLED as exc:
            raise _http(exc) from exc

    @router.get("/crl", response_class=Response, dependencies=[Depends(require(PUBLIC))])
    def crl() -> Response:
        path = service.pki.directory / "crl.pem"
        data = path.read_bytes() if path.exists() else service.pki.crl_pem()
        return Response(data, media_type="application/x-pem-file")

    return router


def build_enroll_router(
    fleet_data_dir: Path,
    pki_dir: Path,
    broker_url: str,
    *,
    crl_url: str | None = None,
    cert_days: int = 365,
    on_revoked: Callable[[list[IssuedCert]], None] | None = None,
    broker_dir: Path | None = None,
    broker_admin: Path | None = None,
) -> APIRouter:
    """The enrolment router of a fleet whose key ring and claims live in ``fleet_data_dir``.

    With ``broker_dir`` (``fleet broker-config``) and ``broker_admin`` (a broker admin identity
    folder), each device is granted on the running broker before its certificate is issued, and
    revoked ones are removed from it (and disconnected)."""
    pki = CityPKI.load(pki_dir)
    on_enrolling: Callable[[str], object] | None = None
    after_revoke = on_revoked
    if broker_dir is not None and broker_admin is not None:
        from fleet.brokerconf import BrokerAccess

        access = BrokerAccess(pki, broker_dir, broker_admin)
        on_enrolling = access.grant_device

        def after_revoke(records: list[IssuedCert]) -> None:
            try:
                access.update({r.subject for r in records})
            finally:
                if on_revoked is not None:
                    on_revoked(records)

    service = EnrollService(
        pki,
        ClaimStore.open(Path(fleet_data_dir) / "claims.db"),
        keyring_trust(fleet_data_dir),
        broker_url,
        crl_url=crl_url,
        cert_days=cert_days,
        on_revoked=after_revoke,
        on_enrolling=on_enrolling,
    )
    return enroll_router(service)


def router_from_env(_service: object = None) -> APIRouter:
    """Plug-in for ``cityedge fleet serve --router fleet.enroll:router_from_env``.

    Reads CITYEDGE_FLEET_DATA (key ring + claims.db, default var/fleet), CITYEDGE_PKI_DIR
    (default var/pki), CITYEDGE_DEVICE_BROKER_URL (the mqtts:// URL devices use), CITYEDGE_CRL_URL,
    and CITYEDGE_BROKER_DIR + CITYEDGE_BROKER_ADMIN (broker directory and broker admin identity
    folder: devices are granted on the broker as they enrol).
    """
    broker_url = os.environ.get("CITYEDGE_DEVICE_BROKER_URL")
    if not broker_url:
        raise PKIError("set CITYEDGE_DEVICE_BROKER_URL to the mqtts://HOST:PORT devices connect to")
    return build_enroll_router(
        Path(os.environ.get("CITYEDGE_FLEET_DATA", "var/fleet")),
        Path(os.environ.get("CITYEDGE_PKI_DIR", "var/pki")),
        broker_url,
        crl_url=os.environ.get("CITYEDGE_CRL_URL") or None,
        broker_dir=_env_path("CITYEDGE_BROKER_DIR"),
        broker_admin=_env_path("CITYEDGE_BROKER_ADMIN"),
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
