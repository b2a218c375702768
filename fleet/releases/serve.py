"""Serve the release repository over HTTP, and keep its timestamp signed.

``releases_router(repo)`` serves exactly two subtrees of the repository folder:

* ``GET/HEAD /tuf/metadata/{name}``: the four top-level roles (``timestamp.json``, ``root.json``,
  ``N.root.json``, ``N.targets.json``, ``N.snapshot.json``), nothing else. ``timestamp.json`` and
  ``root.json`` change in place and are sent with ``Cache-Control: no-cache`` and a content ETag
  (``If-None-Match`` answers 304); versioned files never change and may be cached for good.
* ``GET/HEAD /tuf/targets/{path}``: manifests and content-addressed objects, with HTTP Range
  (206 + Content-Range, as Starlette's ``FileResponse`` implements it) so devices resume.

Path segments are checked (no ``..``, no hidden names) and the resolved file must stay inside
``targets/``; ``REPO/keys`` and ``REPO/repository.json`` are never reachable.

``TimestampResigner`` is a thread that calls ``repo.refresh_online`` every ``interval_s``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse

from fleet.auth.deps import require
from fleet.auth.permissions import PUBLIC
from fleet.releases import meta
from fleet.releases.repo import expiry_warnings, refresh_online
from protocol.timefmt import utc_now

log = logging.getLogger(__name__)

METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,9}\.)?(?:root|targets|snapshot|timestamp)\.json$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}$")
_MUTABLE = ("timestamp.json", "root.json")
IMMUTABLE = "public, max-age=31536000, immutable"
WARN_EVERY_S = 3600.0


def releases_router(repo: Path, prefix: str = "/tuf") -> APIRouter:
    """Routes serving ``repo``'s metadata and targets under ``prefix``."""
    metadata_dir = meta.metadata_dir(repo)
    targets_root = (repo / meta.TARGETS_DIR).resolve()
    router = APIRouter(prefix=prefix, tags=["releases"])

    @router.api_route(
        "/metadata/{name}",
        methods=["GET", "HEAD"],
        include_in_schema=False,
        dependencies=[Depends(require(PUBLIC))],
    )
    def metadata(name: str, request: Request) -> Response:
        if not METADATA_NAME.match(name):
            raise HTTPException(404, "no such metadata")
        try:
            data = (metadata_dir / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, "no such metadata") from None
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache" if name in _MUTABLE else IMMUTABLE}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return Response(b"", media_type="application/json", headers=headers)
        return Response(data, media_type="application/json", headers=headers)

    @router.api_route(
        "/targets/{path:path}",
        methods=["GET", "HEAD"],
        include_in_schema=False,
        dependencies=[Depends(require(PUBLIC))],
    )
    def targets(path: str) -> Response:
        parts = path.split("/")
        if not all(_SEGMENT.match(part) and part not in (".", "..") for part in parts):
            raise HTTPException(404, "no such target")
        file = targets_root.joinpath(*parts).resolve()
        if not file.is_relative_to(targets_root) or not file.is_file():
            raise HTTPException(404, "no such target")
        return FileResponse(file, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE})

    return router


class TimestampResigner:
    """Thread re-signing the timestamp (and snapshot) with the online keys before they expire.

    Without it the devices refuse the repository once ``timestamp.json`` expires (a frozen
    repository looks exactly like a freeze attack to them)."""

    def __init__(
        self,
        repo: Path,
        interval_s: float = 300.0,
        margin: timedelta | None = None,
        *,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.repo = repo
        self.interval_s = interval_s
        self.margin = margin
        self.now = now
        self.resigned = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -WARN_EVERY_S

    def run_once(self) -> bool:
        """One check; True when it signed a new timestamp."""
        moment = self.now()
        did = refresh_online(self.repo, moment, self.margin)
        if did:
            self.resigned += 1
            log.info("release repository %s: timestamp re-signed", self.repo)
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            for note in expiry_warnings(self.repo, moment):
                log.warning("release repository %s: %s", self.repo, note)
        return did

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # supervisor boundary: keep the thread alive, say what failed
                self.last_error = str(exc)
                log.error("release repository %s: re-signing the timestamp failed: %s", self.repo, exc)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tuf-resigner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
