"""Evidence of ``traffic.violation`` events: checked at arrival, images kept content-addressed.

Evidence reaches the fleet only over the device-authenticated channel: the camera hands the
violation to its agent, the agent signs the envelope with the device key and sends it over MQTT
(mTLS; the broker lets a certificate publish only under its own device id). The images travel
inline (base64) inside that signed event. There is no HTTP upload.

At arrival (``EvidenceIntake.check``, called by the batch writer before the event is committed)
the fleet looks up *that device's* certificates in the PKI inventory (``fleet.devicekeys``) and
refuses the event (``bad_evidence``, logged with its topic, not stored) when the device has no
certificate, is revoked, has no certificate valid at the event's time, the signature is not made
with one of its certified keys, or an image does not hash to the sha256 the signed data lists. A
valid event's images are written to the ``EvidenceStore`` (fsync'd, before the event is committed
and acknowledged); the event row keeps the signed data without the inline bytes (personal data is
served only by ``GET /api/evidence/{sha256}``), and an ``evidence`` row records that and how it
was verified.

``verify_evidence(envelope, fetch_image, device_public_key)`` re-checks a stored or received
envelope on demand: signature over its canonical JSON (inline images whose bytes were moved to
the store are put back first, so the signature still covers them) and every image's sha256.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, HTTPException, Response

from fleet.apimodels import EventOut
from fleet.auth.deps import require
from fleet.auth.permissions import EVIDENCE_READ
from fleet.inbound import BAD_EVIDENCE, Inbound
from protocol.errors import SignatureError
from protocol.signing import verify
from protocol.timefmt import parse_ts, utc_now

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
CLOCK_SKEW = timedelta(minutes=5)


class EvidenceError(Exception):
    """Evidence is missing, altered or not signed by the device."""


class EvidenceSignatureError(EvidenceError):
    """The envelope's signature is missing or does not verify with the device key."""


class EvidenceHashError(EvidenceError):
    """An image is missing or its bytes do not have the sha256 named in the signed event."""


class EvidenceRefused(EvidenceError):
    """The device may not submit evidence: no certificate, revoked, or none valid at the time."""


class EvidenceUnavailable(Exception):
    """The check could not be made now (PKI inventory or evidence disk unreachable): retry later,
    never refuse the evidence for it."""


class EvidenceStore:
    """Images on disk under their sha256 (``ab/abcdef...``); written atomically, never overwritten."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError("not a sha256 (64 lower-case hex characters)")
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, data: bytes) -> bool:
        """Store ``data``; True if new, False if already there. ValueError if the hash differs."""
        target = self.path(sha256)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"body has sha256 {actual}, not {sha256}")
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except (FileNotFoundError, ValueError):
            return None


def evidence_router(
    store: EvidenceStore,
    *,
    dependencies: Sequence[Any] = (),
    events: Callable[[str], dict[str, Any] | None] | None = None,
) -> APIRouter:
    """``GET /api/evidence/{sha256}`` (read-only: evidence arrives over MQTT, see module doc) and,
    with ``events``, ``GET /api/evidence/events/{event_id}``: a violation with its plate text (the
    events API leaves that out, fleet/privacy.py). Both are personal data: audited views."""
    router = APIRouter(
        prefix="/api/evidence", tags=["evidence"], dependencies=[Depends(d) for d in dependencies]
    )

    if events is not None:
        lookup = events

        @router.get(
            "/events/{event_id}",
            response_model=EventOut,
            dependencies=[Depends(require(EVIDENCE_READ, personal_data=True))],
        )
        def full_event(event_id: str) -> Any:
            """The whole event, personal data included (the view is on the audit trail)."""
            row = lookup(event_id)
            if row is None:
                raise HTTPException(404, f"no event {event_id!r}")
            return row

    @router.get("/{sha256}", dependencies=[Depends(require(EVIDENCE_READ, personal_data=True))])
    def download(sha256: str) -> Response:
        if not SHA256_RE.match(sha256):
            raise HTTPException(422, "the address must be a sha256: 64 lower-case hex characters")
        data = store.get(sha256)
        if data is None:
            raise HTTPException(404, "no evidence with that sha256")
        return Response(
            content=data,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=31536000, immutable"},
        )

    return router


def evidence_router_for(service: Any) -> APIRouter:
    """Router factory for ``fleet serve``: the evidence store lives in the fleet data dir."""
    return evidence_router(
        EvidenceStore(evidence_dir(Path(service.config.data_dir))), events=service.store.event
    )


def evidence_dir(data_dir: Path) -> Path:
    """Where a fleet keeps its evidence images: ``DATA_DIR/evidence``."""
    return Path(data_dir) / "evidence"


# --- on-demand verification ---------------------------------------------------------------------


@dataclass
class EvidenceReport:
    """What ``verify_evidence`` checked: the signing key id and each verified image hash."""

    kid: str
    images: list[dict[str, Any]] = field(default_factory=list)


def _decode_inline(sha: str, inline: object) -> bytes:
    text = str(inline)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceHashError(f"image {sha[:12]}…: inline data is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise EvidenceHashError(f"image {sha[:12]}…: inline data is not canonical base64")
    return raw


def _image_bytes(image: Mapping[str, Any], fetch_image: Callable[[str], bytes | None]) -> bytes:
    sha = str(image.get("sha256", ""))
    inline = image.get("data")
    if inline is not None:
        return _decode_inline(sha, inline)
    data = fetch_image(sha)
    if data is None:
        raise EvidenceHashError(f"image {sha[:12]}… is not in the evidence store")
    return data


def _images(envelope: Mapping[str, Any]) -> list[Any]:
    data = envelope.get("data")
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, list) or not images:
        raise EvidenceHashError("signed violation lists no evidence images")
    return images


def with_inline_images(
    envelope: Mapping[str, Any], fetch_image: Callable[[str], bytes | None]
) -> dict[str, Any]:
    """A copy of ``envelope`` whose inline images (``store: inline``) whose bytes were moved to the
    evidence store carry their base64 again: exactly what the device signed."""
    full = copy.deepcopy(dict(envelope))
    data = full.get("data")
    images = data.get("images") if isinstance(data, dict) else None
    for image in images if isinstance(images, list) else []:
        if isinstance(image, dict) and image.get("store") == "inline" and "data" not in image:
            raw = fetch_image(str(image.get("sha256", "")))
            if raw is None:
                raise EvidenceHashError(
                    f"image {str(image.get('sha256'))[:12]}… is not in the evidence store"
                )
            image["data"] = base64.b64encode(raw).decode("ascii")
    return full


def verify_evidence(
    envelope: Mapping[str, Any],
    fetch_image: Callable[[str], bytes | None],
    device_public_key: Ed25519PublicKey | Mapping[str, Ed25519PublicKey],
) -> EvidenceReport:
    """Check the envelope signature and every image hash; raise EvidenceError saying what is wrong.

    ``device_public_key`` is the key of the device named in the envelope (or a kid → key map).
    """
    sig = envelope.get("sig")
    if not isinstance(sig, Mapping):
        raise EvidenceSignatureError("violation event is not signed")
    keys = (
        dict(device_public_key)
        if isinstance(device_public_key, Mapping)
        else {str(sig.get("kid")): device_public_key}
    )
    full = with_inline_images(envelope, fetch_image)
    try:
        kid = verify(full, keys)
    except SignatureError as exc:
        raise EvidenceSignatureError(f"violation event signature invalid: {exc}") from exc
    report = EvidenceReport(kid=kid)
    for image in _images(full):
        if not isinstance(image, Mapping) or not SHA256_RE.match(str(image.get("sha256", ""))):
            raise EvidenceHashError("an evidence image entry has no valid sha256")
        sha = str(image["sha256"])
        actual = hashlib.sha256(_image_bytes(image, fetch_image)).hexdigest()
        if actual != sha:
            raise EvidenceHashError(f"image {sha[:12]}… has been altered: its bytes hash to {actual[:12]}…")
        report.images.append({"role": image.get("role"), "sha256": sha, "store": image.get("store")})
    return report


# --- verification at arrival --------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKey:
    """One certified, unrevoked Ed25519 key of a device (from its certificate in the inventory)."""

    serial: int
    fingerprint: str
    key: Ed25519PublicKey
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class DeviceKeys:
    """What the PKI inventory says about one device id."""

    device: str
    issued: int = 0
    """Device certificates ever issued for this id (0: unknown to the city PKI)."""
    revoked: bool = False
    """Every one of them is revoked."""
    keys: tuple[DeviceKey, ...] = ()
    """The unrevoked ones that hold an Ed25519 key (what evidence may be signed with)."""


class KeyDirectory(Protocol):
    """Device keys by device id, as the PKI inventory says now."""

    def keys(self, device: str) -> DeviceKeys: ...


@dataclass(frozen=True)
class ArrivalReport:
    """A violation verified at arrival: with which certificate, and its images' bytes."""

    serial: int
    fingerprint: str
    images: list[dict[str, Any]]
    blobs: dict[str, bytes]


def check_arrival(
    envelope: Mapping[str, Any], keys: DeviceKeys, fetch_image: Callable[[str], bytes | None]
) -> ArrivalReport:
    """Decide whether ``envelope`` (a decoded ``traffic.violation``) is evidence of its device.

    Pure: raises EvidenceRefused (device unknown, revoked, no certificate valid at the event's
    time), EvidenceSignatureError (not signed with one of the device's certified keys) or
    EvidenceHashError (an image does not match its sha256); returns what was verified.
    """
    device = str(envelope.get("device"))
    if keys.issued == 0:
        raise EvidenceRefused(
            f"{device} has no certificate from the city PKI: evidence is accepted only from enrolled "
            "devices (enrol it with `cityedge provision enroll`)"
        )
    if keys.revoked:
        raise EvidenceRefused(f"{device} is revoked: its evidence is refused")
    sig = envelope.get("sig")
    kid = sig.get("kid") if isinstance(sig, Mapping) else None
    if kid != device:
        raise EvidenceSignatureError(f"evidence of {device} is signed as {kid!r}, not as the device")
    if not keys.keys:
        raise EvidenceRefused(
            f"no unrevoked certificate of {device} holds an Ed25519 key the fleet knows (certificates "
            "from an older inventory carry no key): renew its certificate (`cityedge provision renew`)"
        )
    try:
        at = parse_ts(str(envelope.get("ts")))
    except ValueError as exc:
        raise EvidenceRefused(f"evidence of {device} has no readable time: {exc}") from exc
    current = [k for k in keys.keys if k.not_before - CLOCK_SKEW <= at <= k.not_after + CLOCK_SKEW]
    if not current:
        raise EvidenceRefused(
            f"no certificate of {device} was valid at the event's time {envelope.get('ts')}"
        )
    failure: EvidenceSignatureError | None = None
    for candidate in current:
        try:
            report = verify_evidence(envelope, fetch_image, candidate.key)
        except EvidenceSignatureError as exc:
            failure = exc
            continue
        blobs: dict[str, bytes] = {}
        images: list[dict[str, Any]] = []
        for image in _images(envelope):
            sha = str(image["sha256"])
            raw = _image_bytes(image, fetch_image)
            if image.get("data") is not None:
                blobs[sha] = raw
            images.append({"role": image.get("role"), "sha256": sha, "bytes": len(raw)})
        assert report.kid == device
        return ArrivalReport(candidate.serial, candidate.fingerprint, images, blobs)
    raise EvidenceSignatureError(
        f"evidence of {device} is not signed with its certified key (another device's key, or "
        f"altered after signing): {failure}"
    )


def strip_inline(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope without the inline image bytes (kept in the evidence store instead)."""
    data = envelope.get("data")
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list):
        data = dict(data)  # type: ignore[arg-type]
        data["images"] = [
            {k: v for k, v in image.items() if k != "data"} if isinstance(image, dict) else image
            for image in images
        ]
        return {**envelope, "data": data}
    return envelope


class EvidenceIntake:
    """The I/O shell of ``check_arrival`` for the batch writer.

    ``check(item)`` either marks ``item`` refused (``bad_evidence`` with the reason) or writes its
    images to the store and sets ``item.evidence`` (the ``evidence`` row) with the inline bytes
    taken out of ``item.body``. Raises EvidenceUnavailable when it cannot decide now.
    """

    def __init__(
        self, directory: KeyDirectory, store: EvidenceStore, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.directory = directory
        self.store = store
        self.clock = clock

    def check(self, item: Inbound) -> None:
        body = item.body
        if body is None or not item.ok:
            return
        device = str(body.get("device"))
        try:
            report = check_arrival(body, self.directory.keys(device), self.store.get)
        except EvidenceError as exc:
            item.error, item.detail, item.body = BAD_EVIDENCE, str(exc), None
            return
        try:
            for sha, raw in report.blobs.items():
                self.store.put(sha, raw)
        except OSError as exc:
            raise EvidenceUnavailable(f"cannot write evidence images to {self.store.root}: {exc}") from exc
        item.body = strip_inline(body)
        item.evidence = {
            "event_id": body["id"],
            "device": device,
            "kind": body["kind"],
            "verified_at": self.clock(),
            "cert_serial": format(report.serial, "x"),
            "key_fingerprint": report.fingerprint,
            "images": report.images,
        }
