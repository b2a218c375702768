"""Resumable download of content-addressed release objects (``targets/objects/<sha256>``).

One object at a time, streamed to ``<dest>.part`` while hashing; a broken transfer resumes from the
part's size with ``Range: bytes=N-`` (also after a restart of the agent, since the part stays on
disk); the object is renamed to ``dest`` only once its length and sha256 match the signed manifest.
A server that ignores ``Range`` (answers 200) restarts the object from byte 0; one that keeps
sending past the manifest's length is cut off (endless-data attack) and the part is discarded.

Transient failures (connection refused or reset, timeouts, HTTP 5xx, a body cut short) are retried
with ``agent.link.backoff_delay`` (full jitter) up to ``retries`` times, then surface as
``TransferError`` saying where the next try will resume. The object's trust comes from the signed
manifest, not from the transport: plain HTTP is as safe as HTTPS for integrity.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from agent.link import backoff_delay
from agent.ota.errors import DiskFull, InstallError, IntegrityError, TransferError
from protocol.atomic import fsync_dir
from protocol.release import object_path

CHUNK = 64 * 1024
PART_SUFFIX = ".part"
BACKOFF_LOW_S = 0.5
BACKOFF_HIGH_S = 60.0
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Broken(Exception):
    """A transient failure of one attempt (the loop retries it)."""


class _Permanent(Exception):
    """The repository answered, but not with the object (4xx): retrying now will not help."""


def part_path(dest: Path) -> Path:
    """Where the partial download of ``dest`` lives (kept across restarts: the resume point)."""
    return dest.with_name(dest.name + PART_SUFFIX)


def hash_file(path: Path, limit: int | None = None) -> tuple[hashlib._Hash, int]:
    """sha256 of the first ``limit`` bytes of ``path`` (all if None) and the bytes read."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while limit is None or done < limit:
            want = CHUNK * 16 if limit is None else min(CHUNK * 16, limit - done)
            block = handle.read(want)
            if not block:
                break
            digest.update(block)
            done += len(block)
    return digest, done


@dataclass
class _State:
    network: int
    """Bytes received over the network in this ``fetch`` call."""
    old_part: bool
    """The part holds bytes from an earlier call (possibly damaged by a power cut)."""


class _Bucket:
    """Token bucket: ``rate`` bytes per second with a one-second burst."""

    def __init__(self, rate: int, wait: Callable[[float], None]) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.stamp = time.monotonic()
        self.wait = wait

    def take(self, amount: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        if self.tokens < 0:
            self.wait(-self.tokens / self.rate)
            # The pause paid the debt: count from its end (also right when ``wait`` is a stand-in).
            self.tokens = 0.0
            self.stamp = time.monotonic()


class ObjectFetcher:
    """Downloads objects from ``base_url`` (the repository's ``targets/`` URL).

    ``sleep`` is used for backoff and rate-limit pauses; with the default (``time.sleep``) and a
    ``stop`` event, the pauses wait on the event instead so a stop ends them at once. ``pool`` may
    carry a configured ``urllib3.PoolManager`` (TLS CA, proxy); one is made otherwise.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        retries: int,
        rate_limit_bps: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if rate_limit_bps is not None and rate_limit_bps <= 0:
            raise ValueError("rate_limit_bps must be positive")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout_s = timeout_s
        self.retries = retries
        self.rate_limit_bps = rate_limit_bps
        self._sleep = sleep
        self._stop = stop
        self._rng = rng or random.Random()
        self._pool = pool or urllib3.PoolManager(num_pools=2, maxsize=1)
        self._chunk = CHUNK if rate_limit_bps is None else max(1024, min(CHUNK, rate_limit_bps // 8))

    def url_for(self, sha256: str) -> str:
        return self.base_url + object_path(sha256)

    # -- public ------------------------------------------------------------------------------------

    def fetch(
        self,
        sha256: str,
        length: int,
        dest: Path,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Download object ``sha256`` of ``length`` bytes to ``dest``; returns the bytes that came
        over the network in this call (fewer than ``length`` when a part was resumed, 0 when
        ``dest`` was already complete)."""
        url = self.url_for(sha256)
        if length < 0:
            raise ValueError("length must be >= 0")
        if self._complete(dest, sha256, length):
            return 0
        part = part_path(dest)
        state = _State(network=0, old_part=_size(part) > 0)
        bucket = _Bucket(self.rate_limit_bps, self._pause) if self.rate_limit_bps else None
        attempt = 0
        while True:
            self._check_stop(url, part, length)
            try:
                self._attempt(url, sha256, length, dest, part, state, bucket, on_progress)
                return state.network
            except IntegrityError:
                if not state.old_part:
                    raise
                # The part left by an earlier run may be what is damaged (a power cut can leave
                # zeros at its end): it is gone now, so start this object once more from byte 0.
                state.old_part = False
            except _Permanent as exc:
                raise TransferError(
                    f"the fleet's repository at {url} does not serve this object: {exc}; the release "
                    "may not be fully published — ask the operator to publish it again"
                ) from None
            except _Broken as exc:
                resume = _size(part)
                if attempt >= self.retries:
                    raise TransferError(
                        f"the fleet's repository at {url} could not be reached: {exc} "
                        f"(gave up after {attempt + 1} tries); will resume at byte {resume} of {length}; "
                        "check the device's network link and the repository URL"
                    ) from exc.__cause__
                delay = backoff_delay(attempt, BACKOFF_LOW_S, BACKOFF_HIGH_S, self._rng)
                attempt += 1
                self._pause(delay)

    # -- one attempt -------------------------------------------------------------------------------

    def _attempt(
        self,
        url: str,
        sha256: str,
        length: int,
        dest: Path,
        part: Path,
        state: _State,
        bucket: _Bucket | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        offset = _size(part)
        if offset > length:
            part.unlink()
            offset = 0
        if offset == 0:
            state.old_part = False
        digest, offset = hash_file(part, offset) if offset else (hashlib.sha256(), 0)
        if offset == length:  # complete part from an earlier run (or an empty object): no request
            _close_part(_open_part(part, offset), part)
            self._finish(part, dest, digest, sha256, length)
            return
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                retries=urllib3.Retry(total=5, connect=0, read=0, status=0, other=0, redirect=5),
            )
        except (Urllib3Error, OSError) as exc:
            raise _Broken(_describe(exc)) from exc
        clean = False
        try:
            status = response.status
            if status == 416 and offset:
                # The server holds fewer bytes than the part: the part is not from this object.
                part.unlink(missing_ok=True)
                raise _Broken(f"the server refused to resume at byte {offset} (HTTP 416)")
            if status >= 500 or status in (408, 429):
                raise _Broken(f"the server answered HTTP {status}")
            if status == 200:
                if offset:  # Range ignored: the body starts at byte 0
                    digest, offset = hashlib.sha256(), 0
                    state.old_part = False
                self._check_declared(response, part, length, 0)
            elif status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if total is not None and total != length:
                    part.unlink(missing_ok=True)
                    raise IntegrityError(
                        f"the repository's object {sha256} is {total} bytes but the signed manifest "
                        f"lists {length}: the repository or something between it and the device is "
                        "serving wrong content; the partial download was discarded"
                    )
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _Broken(f"the server resumed at byte {start} instead of {offset}")
                self._check_declared(response, part, length, offset)
            else:
                raise _Permanent(f"HTTP {status}")
            self._stream(response, url, sha256, length, part, offset, digest, state, bucket, on_progress)
            clean = True
        finally:
            if clean:
                response.release_conn()
            else:
                response.close()
        self._finish(part, dest, digest, sha256, length)

    def _stream(
        self,
        response: urllib3.BaseHTTPResponse,
        url: str,
        sha256: str,
        length: int,
        part: Path,
        offset: int,
        digest: hashlib._Hash,
        state: _State,
        bucket: _Bucket | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        handle = _open_part(part, offset)
        try:
            while offset < length:
                self._check_stop(url, part, length, offset)
                block = _read(response, min(self._chunk, length - offset))
                if not block:
                    raise _Broken(f"the transfer broke off at byte {offset} of {length}")
                _write(handle, part, block)
                digest.update(block)
                offset += len(block)
                state.network += len(block)
                if on_progress is not None:
                    on_progress(offset)
                if bucket is not None:
                    bucket.take(len(block))
            extra = _read(response, 1)
            if extra:
                state.network += len(extra)
                _discard(handle, part)
                raise IntegrityError(
                    f"the repository kept sending data past the {length} bytes the signed manifest "
                    f"lists for object {sha256}; the download was refused and discarded"
                )
        finally:
            if not handle.closed:
                _close_part(handle, part)

    def _finish(self, part: Path, dest: Path, digest: hashlib._Hash, sha256: str, length: int) -> None:
        size = _size(part)
        if size != length or digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"the object downloaded from the repository does not match the signed manifest "
                f"(expected {length} bytes with sha256 {sha256}, got {size} bytes with sha256 "
                f"{digest.hexdigest()}); it was discarded — the repository or something between it "
                "and the device serves wrong content"
            )
        try:
            os.replace(part, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise _disk_error(dest, exc) from exc

    # -- helpers -----------------------------------------------------------------------------------

    def _complete(self, dest: Path, sha256: str, length: int) -> bool:
        if not dest.exists():
            return False
        digest, size = hash_file(dest)
        if size == length and digest.hexdigest() == sha256:
            return True
        dest.unlink()
        return False

    def _check_declared(
        self, response: urllib3.BaseHTTPResponse, part: Path, length: int, offset: int
    ) -> None:
        declared = response.headers.get("Content-Length")
        # A declared length that differs is the wrong object: too long (endless-data attack) or
        # too short (a complete answer cannot be resumed into the right one).
        if declared is not None and declared.isdigit() and int(declared) != length - offset:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"the repository announced {int(declared)} bytes from byte {offset} but the signed "
                f"manifest lists {length} bytes in all; the download was refused"
            )

    def _check_stop(self, url: str, part: Path, length: int, offset: int | None = None) -> None:
        if self._stop is not None and self._stop.is_set():
            resume = _size(part) if offset is None else offset
            raise TransferError(
                f"the download from {url} was stopped (the agent is stopping); "
                f"will resume at byte {resume} of {length}"
            )

    def _pause(self, seconds: float) -> None:
        if self._stop is not None and self._sleep is time.sleep:
            self._stop.wait(seconds)
        else:
            self._sleep(seconds)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match((value or "").strip())
    if match is None:
        raise _Broken(f"the server answered 206 with an unreadable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _read(response: urllib3.BaseHTTPResponse, amount: int) -> bytes:
    try:
        return response.read(amount)
    except (Urllib3Error, OSError) as exc:
        raise _Broken(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _disk_error(path: Path, exc: OSError) -> InstallError | DiskFull:
    if exc.errno in _DISK_FULL:
        return DiskFull(
            f"the disk holding {path.parent} is full while downloading the update; the partial "
            "download was kept and resumes once space is freed (old logs, evidence, staging)"
        )
    return InstallError(f"could not write the download to {path}: {exc.strerror or exc}")


def _open_part(part: Path, offset: int) -> BinaryIO:
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        handle = part.open("r+b" if offset else "wb")
        handle.truncate(offset)
        handle.seek(offset)
        return handle
    except OSError as exc:
        raise _disk_error(part, exc) from exc


def _write(handle: BinaryIO, part: Path, block: bytes) -> None:
    try:
        handle.write(block)
    except OSError as exc:
        raise _disk_error(part, exc) from exc


def _close_part(handle: BinaryIO, part: Path) -> None:
    """Flush and fsync the part, so a power cut keeps the resume point; then close it."""
    try:
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as exc:
        raise _disk_error(part, exc) from exc
    finally:
        handle.close()


def _discard(handle: BinaryIO, part: Path) -> None:
    handle.close()
    part.unlink(missing_ok=True)
