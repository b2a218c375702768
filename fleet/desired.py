"""Each device's desired state: configuration and release, signed, stored, published retained.

The desired state is ``{"version", "device", "config", "release"}`` (PROTOCOL.md, shadow rows and
"Updates (OTA)"), signed by the fleet signer exactly as commands are (``issued_at``,
``expires_at``, ``nonce``, ``sig`` and, with a key ring, the root-signed key list as ``trust``),
kept in ``devices.shadow_desired`` and published retained with QoS 1 on
``PREFIX/devices/D/shadow/desired``.

A device applies only a version higher than the one it applied, so every change takes the next
version: one more than the higher of the stored version and the version the device reports having
applied (``shadow/reported`` ``config_version``). The version lives in the database, so it keeps
growing across fleet restarts. Re-signing before the signature expires (``resign_due``, run by the
fleet's maintenance loop through ``tick``) also takes the next version, since the device would
ignore a fresh signature on a version it already has.

Split as elsewhere: pure functions build and judge documents (``next_version``,
``desired_body``, ``make_release``, ``check_downgrade``, ``resign_deadline``); ``DesiredService``
is the I/O shell (one transaction per change, then the retained publish).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, select

from fleet.commands import CommandSigner
from fleet.db import devices
from fleet.otastate import ota_label, ota_states
from fleet.store import Row, Store
from protocol.release import DesiredRelease, check_relative_path, manifest_target, version_key
from protocol.timefmt import parse_ts, utc_now
from protocol.topics import Topics

log = logging.getLogger(__name__)

RESIGN_MARGIN = timedelta(days=7)
"""Re-sign a retained desired state this long before its signature expires (at most a third of its
lifetime before, for short-lived signatures)."""
RESCAN_S = 300.0
"""Longest time between two scans for due re-signs (another worker may have changed a state)."""

Publish = Callable[[str, bytes, bool], object]
"""``publish(topic, payload, retain)``: QoS 1; may return paho's ``MQTTMessageInfo`` (then
``acknowledged`` can wait for the broker's PUBACK)."""
SENT_KEPT = 50_000
"""Message infos kept for ``acknowledged``; beyond this, acknowledged ones are dropped."""


class DesiredError(Exception):
    """A desired state could not be set; the message says why and what to do."""


class DeviceNotFound(DesiredError):
    """The device has never been seen by the fleet."""


class InvalidDesired(DesiredError):
    """The release or configuration asked for is not acceptable."""


class DowngradeRefused(InvalidDesired):
    """The release is older than the one the device runs and a downgrade was not allowed."""


class DesiredSigningFailed(DesiredError):
    """The signer could not sign the desired state (key missing or unreadable)."""


class DesiredNotPublished(DesiredError):
    """Stored and signed, but the broker did not take it; it is published again by the maintenance loop."""


class _Unchanged(Exception):
    """Inside a change: the stored state no longer needs it (nothing is written)."""


# --- pure core -------------------------------------------------------------------------------------


def stored_version(document: Mapping[str, Any] | None) -> int:
    value = (document or {}).get("version")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def next_version(stored: Mapping[str, Any] | None, reported: Mapping[str, Any] | None) -> int:
    """The version of the next desired state: above the stored one and above the one the device
    reports having applied (a fleet database restored from an old backup must not go backwards)."""
    applied = stored_version({"version": (reported or {}).get("config_version")})
    return max(stored_version(stored), applied) + 1


def make_release(
    version: str, *, target: str | None = None, allow_downgrade: bool = False, force: bool = False
) -> DesiredRelease:
    """A validated ``release`` member (InvalidDesired saying what is wrong)."""
    try:
        return DesiredRelease(
            version=version,
            target=manifest_target(version) if target is None else check_relative_path(target),
            allow_downgrade=allow_downgrade,
            force=force,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidDesired(f"release {first['loc'][0]}: {first['msg']}") from exc
    except ValueError as exc:
        raise InvalidDesired(f"release target: {exc}") from exc


def check_downgrade(device: str, running: str | None, release: DesiredRelease) -> None:
    """DowngradeRefused when the device runs a newer version and the downgrade is not allowed."""
    if running is None or release.allow_downgrade:
        return
    if version_key(release.version) < version_key(running):
        raise DowngradeRefused(
            f"device {device} runs {running}, and release {release.version} is older: the device "
            "would refuse it. Allow the downgrade explicitly (--allow-downgrade, or "
            '"allow_downgrade": true) if that is what you want.'
        )


def desired_body(
    device: str, version: int, config: Mapping[str, Any], release: DesiredRelease | None
) -> dict[str, Any]:
    """The unsigned desired state. ``device`` binds the signature to this device's topic."""
    return {
        "version": version,
        "device": device,
        "config": dict(config),
        "release": None if release is None else release.model_dump(mode="json"),
    }


def current_release(document: Mapping[str, Any] | None) -> DesiredRelease | None:
    value = (document or {}).get("release")
    if not isinstance(value, dict):
        return None
    try:
        return DesiredRelease.model_validate(value)
    except ValueError:
        return None


def current_config(document: Mapping[str, Any] | None) -> dict[str, Any]:
    value = (document or {}).get("config")
    return dict(value) if isinstance(value, dict) else {}


def resign_deadline(document: Mapping[str, Any], margin: timedelta) -> datetime | None:
    """When a signed document should be re-signed: ``margin`` before it expires, but no earlier
    than two thirds into its lifetime. None when it has no expiry (unsigned) or unreadable times."""
    try:
        expires = parse_ts(str(document["expires_at"]))
        issued = parse_ts(str(document["issued_at"]))
    except (KeyError, ValueError, OverflowError):
        return None
    return expires - min(margin, (expires - issued) / 3)


def needs_resign(
    document: Mapping[str, Any], now: datetime, margin: timedelta, signing_kid: str | None
) -> bool:
    """Due for a new signature: near expiry, or signed by another key than the one signing now."""
    deadline = resign_deadline(document, margin)
    if deadline is not None and now >= deadline:
        return True
    if signing_kid is None:
        return False
    sig = document.get("sig")
    kid = sig.get("kid") if isinstance(sig, dict) else None
    return kid != signing_kid


def payload_of(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# --- I/O shell -------------------------------------------------------------------------------------

Change = Callable[[Mapping[str, Any] | None, Row], tuple[dict[str, Any], DesiredRelease | None]]


class DesiredService:
    """Sets, re-signs and reads the desired state of devices.

    ``publish(topic, payload, retain)`` publishes QoS 1 (the fleet's MQTT link); ``signer`` is the
    fleet's command signer (desired states are told apart by having no ``name``).
    """

    def __init__(
        self,
        store: Store,
        publish: Publish,
        signer: CommandSigner,
        topics: Topics,
        *,
        margin: timedelta = RESIGN_MARGIN,
        rescan_s: float = RESCAN_S,
    ) -> None:
        self.store = store
        self.publish = publish
        self.signer = signer
        self.topics = topics
        self.margin = margin
        self.rescan_s = rescan_s
        self._lock = threading.Lock()  # one change at a time: publishes leave in version order
        self._next_due: datetime | None = None
        self._last_scan = -float("inf")
        self._unpublished: set[str] = set()
        self._sent: dict[str, Any] = {}  # device -> message info of its latest desired publish

    @property
    def signing_kid(self) -> str | None:
        kid = getattr(self.signer, "kid", None)
        return kid if isinstance(kid, str) else None

    # -- changes --------------------------------------------------------------------------------

    def set_release(
        self,
        device_id: str,
        version: str,
        *,
        target: str | None = None,
        allow_downgrade: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """Ask ``device_id`` to run release ``version`` (its configuration is kept); returns the
        signed desired state as published."""
        release = make_release(version, target=target, allow_downgrade=allow_downgrade, force=force)

        def change(document: Mapping[str, Any] | None, row: Row) -> tuple[dict[str, Any], DesiredRelease]:
            check_downgrade(device_id, row["version"], release)
            return current_config(document), release

        return self._change(device_id, change)

    def ensure_release(self, device_id: str, version: str) -> dict[str, Any] | None:
        """Like ``set_release``, but only when the stored desired state does not already carry
        ``version``: returns the new signed state, or None when it was there already. The check and
        the change share one transaction (row lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
        so two workers targeting the same device bump its desired version once between them."""
        release = make_release(version)

        def change(document: Mapping[str, Any] | None, row: Row) -> tuple[dict[str, Any], DesiredRelease]:
            check_downgrade(device_id, row["version"], release)
            return current_config(document), release

        def missing(document: Mapping[str, Any] | None) -> bool:
            stored = current_release(document)
            return stored is None or stored.version != version

        try:
            return self._change(device_id, change, only_if=missing)
        except _Unchanged:
            pass
        with self._lock:  # stored before, perhaps by a worker killed before the broker took it
            document = self.get(device_id)
            if document is not None:
                self._publish(device_id, document)
        return None

    def ensure_releases(self, device_ids: Sequence[str], version: str) -> int:
        """``ensure_release`` for many devices in one transaction (a rollout wave's batch): each
        device whose stored desired state lacks ``version`` gets it under its next version; every
        one is then published (again, unchanged, where it was stored before). Devices that are not
        known or would refuse the release (a downgrade) are logged and left out. Returns how many
        changed. DesiredNotPublished when the broker did not take some (they stay stored)."""
        release = make_release(version)
        with self._lock:
            with self.store.writer.begin() as conn:
                query = select(
                    devices.c.id, devices.c.shadow_desired, devices.c.shadow_reported, devices.c.version
                ).where(devices.c.id.in_(list(device_ids)))
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update()
                rows = {row["id"]: dict(row) for row in conn.execute(query).mappings()}
                out, changed = self._releases_for(device_ids, rows, release)
                if changed:
                    update = devices.update().where(devices.c.id == bindparam("key"))
                    conn.execute(update.values(shadow_desired=bindparam("doc")), changed)
            failed: list[str] = []
            for device_id, document in out:
                self._note_due(document)
                try:
                    self._publish(device_id, document)
                except DesiredNotPublished:
                    failed.append(device_id)
        if failed:
            raise DesiredNotPublished(
                f"the desired states of {len(failed)} device(s) (e.g. {failed[0]}) are stored but the "
                "broker did not take them; the fleet publishes them again once the broker is back"
            )
        return len(changed)

    def _releases_for(
        self, device_ids: Sequence[str], rows: Mapping[str, Row], release: DesiredRelease
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
        """(device, document to publish) for each device, and the ``{"key", "doc"}`` rows to store."""
        out: list[tuple[str, dict[str, Any]]] = []
        changed: list[dict[str, Any]] = []
        for device_id in device_ids:
            row = rows.get(device_id)
            if row is None:
                log.warning("rollout: device %s is not known to the fleet; left out", device_id)
                continue
            document: Mapping[str, Any] | None = row["shadow_desired"]
            stored = current_release(document)
            if document is not None and stored is not None and stored.version == release.version:
                out.append((device_id, dict(document)))
                continue
            try:
                check_downgrade(device_id, row["version"], release)
            except DowngradeRefused as exc:
                log.warning("rollout: %s", exc)
                continue
            version = next_version(document, row["shadow_reported"])
            body = desired_body(device_id, version, current_config(document), release)
            try:
                signed = self.signer.sign(body)
            except Exception as exc:  # the signer is a plug-in: any failure means "not signed"
                raise DesiredSigningFailed(f"could not sign the desired state of {device_id}: {exc}") from exc
            changed.append({"key": device_id, "doc": signed})
            out.append((device_id, signed))
        return out, changed

    def clear_release(self, device_id: str) -> dict[str, Any]:
        """``release: null``: the device stays on what it runs."""
        return self._change(device_id, lambda document, _row: (current_config(document), None))

    def set_config(self, device_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the desired configuration (the release is kept)."""
        if not isinstance(config, Mapping):
            raise InvalidDesired(
                f"the desired configuration must be a JSON object, not {type(config).__name__}"
            )
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise InvalidDesired(f"the desired configuration cannot be written as JSON: {exc}") from exc
        new = dict(config)
        return self._change(device_id, lambda document, _row: (new, current_release(document)))

    def _change(
        self,
        device_id: str,
        change: Change,
        *,
        only_if: Callable[[Mapping[str, Any] | None], bool] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            with self.store.writer.begin() as conn:
                query = select(devices.c.shadow_desired, devices.c.shadow_reported, devices.c.version).where(
                    devices.c.id == device_id
                )
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update()  # several workers: one change per device at a time
                row = conn.execute(query).mappings().first()
                if row is None:
                    raise DeviceNotFound(
                        f"device {device_id!r} is not known to the fleet (it has never connected)"
                    )
                document: Mapping[str, Any] | None = row["shadow_desired"]
                if only_if is not None and not only_if(document):
                    raise _Unchanged  # e.g. another worker re-signed it a moment ago
                config, release = change(document, dict(row))
                body = desired_body(
                    device_id, next_version(document, row["shadow_reported"]), config, release
                )
                try:
                    signed = self.signer.sign(body)
                except Exception as exc:  # the signer is a plug-in: any failure means "not signed"
                    raise DesiredSigningFailed(
                        f"could not sign the desired state of {device_id}: {exc}"
                    ) from exc
                conn.execute(devices.update().where(devices.c.id == device_id).values(shadow_desired=signed))
            self._note_due(signed)
            self._publish(device_id, signed)
        return signed

    def acknowledged(self, device_ids: Sequence[str], timeout_s: float) -> bool:
        """Wait until the broker has acknowledged the latest desired publish of each device
        (True), or ``timeout_s`` passed or one could not be sent (False)."""
        deadline = time.monotonic() + timeout_s
        ok = True
        for device_id in device_ids:
            with self._lock:
                info = self._sent.pop(device_id, None)
            wait = getattr(info, "wait_for_publish", None)
            if wait is None:
                continue
            try:
                wait(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # paho: not queued (no connection, queue full)
                ok = False
                continue
            ok = ok and bool(info.is_published())
        return ok

    def _publish(self, device_id: str, document: Mapping[str, Any]) -> None:
        try:
            info = self.publish(self.topics.shadow_desired(device_id), payload_of(document), True)
            self._sent[device_id] = info
            if len(self._sent) > SENT_KEPT:
                self._sent = {
                    d: i for d, i in self._sent.items() if not getattr(i, "is_published", lambda: True)()
                }
        except Exception as exc:  # the link is a plug-in boundary; the state is stored, retried later
            self._unpublished.add(device_id)
            raise DesiredNotPublished(
                f"desired version {document.get('version')} of {device_id} is stored but the broker did "
                f"not take it ({exc}); the fleet publishes it again once the broker is back"
            ) from exc
        self._unpublished.discard(device_id)

    def _note_due(self, document: Mapping[str, Any]) -> None:
        deadline = resign_deadline(document, self.margin)
        if deadline is not None and (self._next_due is None or deadline < self._next_due):
            self._next_due = deadline

    # -- reads ----------------------------------------------------------------------------------

    def get(self, device_id: str) -> dict[str, Any] | None:
        """The stored signed desired state (None when none was set); DeviceNotFound if unknown."""
        with self.store.reader.connect() as conn:
            row = conn.execute(select(devices.c.shadow_desired).where(devices.c.id == device_id)).first()
        if row is None:
            raise DeviceNotFound(f"device {device_id!r} is not known to the fleet (it has never connected)")
        document = row[0]
        return dict(document) if isinstance(document, dict) else None

    def view(self, device_id: str) -> dict[str, Any]:
        """Desired state beside what the device runs and reports, and its latest OTA state."""
        device = self.store.device(device_id)
        if device is None:
            raise DeviceNotFound(f"device {device_id!r} is not known to the fleet (it has never connected)")
        reported = device.get("shadow_reported") or {}
        applied = reported.get("config_version") if isinstance(reported, dict) else None
        ota = ota_states(self.store.reader, [device_id]).get(device_id)
        desired = device.get("shadow_desired")
        return {
            "device": device_id,
            "desired": desired if isinstance(desired, dict) else None,
            "running_version": device.get("version"),
            "applied_version": applied if isinstance(applied, int) else None,
            "ota": None if ota is None else {**ota, "label": ota_label(ota)},
        }

    # -- maintenance ----------------------------------------------------------------------------

    def resign_due(self, now: datetime) -> list[str]:
        """Re-sign and re-publish (with the next version) every stored desired state due at
        ``now``; returns the device ids done. One device failing does not stop the others."""
        kid = self.signing_kid
        query = select(devices.c.id, devices.c.shadow_desired).where(devices.c.shadow_desired.is_not(None))
        with self.store.reader.connect() as conn:
            stored = [(str(r[0]), r[1]) for r in conn.execute(query) if isinstance(r[1], dict)]
        with self._lock:
            self._last_scan = time.monotonic()
            self._next_due = None  # recomputed below from every stored document
        done: list[str] = []
        for device_id, document in stored:
            if not needs_resign(document, now, self.margin, kid):
                with self._lock:
                    self._note_due(document)
                continue
            try:
                self._change(
                    device_id,
                    lambda doc, _row: (current_config(doc), current_release(doc)),
                    only_if=lambda doc: doc is not None and needs_resign(doc, now, self.margin, kid),
                )
            except _Unchanged:
                continue
            except DesiredNotPublished as exc:
                log.warning("%s", exc)
            except DesiredError as exc:  # retried at the next scan (rescan_s)
                log.warning("could not re-sign the desired state of %s: %s", device_id, exc)
                continue
            done.append(device_id)
        if done:
            log.info("re-signed the desired state of %d device(s)", len(done))
        return done

    def tick(self, now: datetime | None = None) -> list[str]:
        """Called every second by the fleet's maintenance loop: publish again what the broker did
        not take, and re-sign when something is due (or every ``rescan_s`` at the latest)."""
        moment = utc_now() if now is None else now
        for device_id in sorted(self._unpublished):
            try:
                with self._lock:  # read and publish together: a newer state cannot slip in between
                    document = self.get(device_id)
                    if document is None:
                        self._unpublished.discard(device_id)
                    else:
                        self._publish(device_id, document)
            except DeviceNotFound:
                self._unpublished.discard(device_id)
            except DesiredError as exc:
                log.debug("desired state of %s still not published: %s", device_id, exc)
        due = self._next_due is not None and moment >= self._next_due
        if due or time.monotonic() - self._last_scan >= self.rescan_s:
            return self.resign_due(moment)
        return []
