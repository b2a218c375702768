"""Evidence store and verification for ``traffic.violation`` events.

Cameras upload evidence images content-addressed: ``POST /api/evidence/{sha256}`` with the raw
bytes; a body whose sha256 differs from the address is refused (so the store can only hold what a
signed event can point at). ``GET /api/evidence/{sha256}`` returns it.

``verify_evidence(envelope, fetch_image, device_public_key)`` checks a violation on arrival: the
envelope's ed25519 signature (over its canonical JSON without ``sig``, so it covers every image
hash in ``data.images``) and that every image — inline (base64) or fetched from the store — has
exactly the sha256 the signed data names. It is pure (no I/O besides ``fetch_image``).

Add to the fleet app: ``create_app(service, extra_routers=[evidence_router(EvidenceStore(DIR))])``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from protocol.errors import SignatureError
from protocol.signing import verify

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


class EvidenceError(Exception):
    """Evidence is missing, altered or not signed by the device."""


class EvidenceSignatureError(EvidenceError):
    """The envelope's signature is missing or does not verify with the device key."""


class EvidenceHashError(EvidenceError):
    """An image is missing or its bytes do not have the sha256 named in the signed event."""


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


def evidence_router(store: EvidenceStore, *, dependencies: Sequence[Any] = ()) -> APIRouter:
    """``POST/GET /api/evidence/{sha256}``; pass ``dependencies`` (e.g. device mTLS auth) to guard uploads."""
    router = APIRouter(
        prefix="/api/evidence", tags=["evidence"], dependencies=[Depends(d) for d in dependencies]
    )

    def _check(sha256: str) -> None:
        if not SHA256_RE.match(sha256):
            raise HTTPException(422, "the address must be a sha256: 64 lower-case hex characters")

    @router.post("/{sha256}", status_code=201)
    async def upload(sha256: str, request: Request, response: Response) -> dict[str, Any]:
        _check(sha256)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
            raise HTTPException(413, f"evidence larger than {store.max_bytes} bytes")
        body = await request.body()
        if len(body) > store.max_bytes:
            raise HTTPException(413, f"evidence larger than {store.max_bytes} bytes")
        if not body:
            raise HTTPException(400, "empty body")
        try:
            created = store.put(sha256, body)
        except ValueError as exc:
            raise HTTPException(400, f"sha256 mismatch: {exc}") from exc
        if not created:
            response.status_code = 200
        return {"sha256": sha256, "bytes": len(body), "created": created}

    @router.get("/{sha256}")
    def download(sha256: str) -> Response:
        _check(sha256)
        data = store.get(sha256)
        if data is None:
            raise HTTPException(404, "no evidence with that sha256")
        return Response(
            content=data,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=31536000, immutable"},
        )

    return router


@dataclass
class EvidenceReport:
    """What ``verify_evidence`` checked: the signing key id and each verified image hash."""

    kid: str
    images: list[dict[str, Any]] = field(default_factory=list)


def _image_bytes(image: Mapping[str, Any], fetch_image: Callable[[str], bytes | None]) -> bytes:
    sha = str(image.get("sha256", ""))
    inline = image.get("data")
    if inline is not None:
        try:
            return base64.b64decode(str(inline), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EvidenceHashError(f"image {sha[:12]}…: inline data is not valid base64") from exc
    data = fetch_image(sha)
    if data is None:
        raise EvidenceHashError(f"image {sha[:12]}… is not in the evidence store")
    return data


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
    try:
        kid = verify(envelope, keys)
    except SignatureError as exc:
        raise EvidenceSignatureError(f"violation event signature invalid: {exc}") from exc
    data = envelope.get("data")
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, list) or not images:
        raise EvidenceHashError("signed violation lists no evidence images")
    report = EvidenceReport(kid=kid)
    for image in images:
        if not isinstance(image, Mapping) or not SHA256_RE.match(str(image.get("sha256", ""))):
            raise EvidenceHashError("an evidence image entry has no valid sha256")
        sha = str(image["sha256"])
        actual = hashlib.sha256(_image_bytes(image, fetch_image)).hexdigest()
        if actual != sha:
            raise EvidenceHashError(f"image {sha[:12]}… has been altered: its bytes hash to {actual[:12]}…")
        report.images.append({"role": image.get("role"), "sha256": sha, "store": image.get("store")})
    return report


def evidence_router_for(service: Any) -> APIRouter:
    """Router factory for ``fleet serve``: the evidence store lives in the fleet data dir."""
    return evidence_router(EvidenceStore(Path(service.config.data_dir) / "evidence"))
