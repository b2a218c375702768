"""Rollouts over balenaOS devices: each wave's devices are pinned to the release with balena-sdk.

The same driver (``fleet.rollouts.driver``) and the same outcome accounting (``plan.outcome``)
run as for our own devices; only the four backend operations differ:

- ``select``: the devices of the balena fleet (application) whose labels match the selector.
  Labels: ``id`` (the device uuid), ``name`` (device name), ``version`` (the raw version of the
  release it runs) and every device tag (``role=camera`` matches a device tag ``role``). What
  ``restore`` puts back is the release the device was pinned to (its commit), or None when it
  tracked the fleet's release.
- ``set_release``: pin the device to the release (``device.pin_to_release``). A release is named
  by its version (balena ``raw_version`` in the fleet) or by its full commit hash.
- ``restore`` (abort): pin back to the previous release, or ``track_application_release`` when the
  device followed the fleet.
- ``facts``: one ``device.get_all`` per 50 devices, at most every ``poll_s``; a device's state
  becomes a ``DeviceFact``: running the release and ``operational`` -> committed; ``updating``
  (or a download progress) -> in progress; running the release with ``reduced-functionality``
  -> in progress with that reason (it fails at the deadline unless it recovers); heartbeat not
  ``online`` -> offline.
  balenaOS has no application rollback, so this backend never reports "rolled back"; an update
  the supervisor gives up on shows as a device that never reaches the release (failed at the
  deadline). See docs/balena.md for what was checked against the real service and what was not.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleet.rollouts.plan import DeviceFact, RolloutError, Selector

if TYPE_CHECKING:
    from fleet.config import FleetConfig

CHUNK = 50  # devices per status query (keeps the OData filter URL short)
_COMMIT = re.compile(r"^[0-9a-f]{32}$|^[0-9a-f]{40}$")
REDUCED = "services not all running on the release (balena: reduced-functionality)"


class BalenaError(RolloutError):
    """balenaCloud refused or could not answer a rollout request."""


def load_balena(config: FleetConfig) -> Any:
    """A balena-sdk client for ``config.balena_host``, logged in with the API key in
    ``config.balena_token_file``; nothing is written to disk (``data_directory: False``). Raises
    ``FleetConfigError`` when the key cannot be read (``fleet serve`` says so and exits)."""
    from balena import Balena

    from fleet.config import FleetConfigError

    if config.balena_token_file is None:
        raise FleetConfigError("the balena backend needs balena_token_file (a file holding the API key)")
    try:
        key = config.balena_token_file.read_text().strip()
    except OSError as exc:
        raise FleetConfigError(f"cannot read the balena API key: {exc}") from exc
    if not key:
        raise FleetConfigError(f"{config.balena_token_file} is empty: put the balena API key in it")
    sdk = Balena({"balena_host": config.balena_host, "data_directory": False})
    sdk.auth.login_with_token(key)
    return sdk


def _first(value: Any) -> Mapping[str, Any] | None:
    """An expanded navigation property: a list of zero or one object."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return value[0]
    return None


def device_labels(device: Mapping[str, Any]) -> dict[str, str]:
    """What a selector matches on one balena device (see the module docstring)."""
    out = {"id": str(device["uuid"])}
    if device.get("device_name"):
        out["name"] = str(device["device_name"])
    running = _first(device.get("is_running__release"))
    if running is not None and running.get("raw_version"):
        out["version"] = str(running["raw_version"])
    for tag in device.get("device_tag") or []:
        if isinstance(tag, Mapping) and isinstance(tag.get("value"), str):
            out.setdefault(str(tag["tag_key"]), tag["value"])
    return out


def device_fact(device: Mapping[str, Any], commit: str) -> DeviceFact:
    """Pure: a balena device record -> the fact the outcome accounting reads."""
    running = _first(device.get("is_running__release"))
    on_release = running is not None and running.get("commit") == commit
    heartbeat = device.get("api_heartbeat_state")
    online = heartbeat == "online" if heartbeat is not None else bool(device.get("is_online"))
    status = device.get("overall_status")
    if on_release and status == "operational":
        return DeviceFact(online=online, ota_kind="ota.committed")
    if on_release and status == "reduced-functionality":
        return DeviceFact(online=online, ota_kind="ota.installing", reason=REDUCED)
    if status == "updating" or device.get("download_progress") is not None:
        return DeviceFact(online=online, ota_kind="ota.downloading")
    return DeviceFact(online=online)


class BalenaBackend:
    """A balena fleet driven through balena-sdk (``sdk``: a logged-in ``balena.Balena``)."""

    name = "balena"

    def __init__(
        self, sdk: Any, fleet: str, *, poll_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sdk = sdk
        self.fleet = fleet
        self.poll_s = poll_s
        self.clock = clock
        self._commits: dict[str, str] = {}
        self._facts: dict[str, tuple[float, dict[str, DeviceFact]]] = {}
        self._lock = threading.Lock()  # the rollout thread and the API's threads share it

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from balena.exceptions import BalenaException

        try:
            return fn(*args)
        except BalenaException as exc:
            raise BalenaError(f"balena: {what} failed: {exc}") from exc

    def commit_of(self, release: str) -> str:
        """The commit of ``release``: a full commit hash as is, else the release of this fleet
        whose version (``raw_version``) it is."""
        if _COMMIT.match(release):
            return release
        if release not in self._commits:
            found = self._call(
                f"finding release {release} of {self.fleet}",
                self.sdk.models.release.get,
                {"application": self.fleet, "raw_version": release},
                {"$select": ["id", "commit", "status"]},
            )
            if found.get("status") != "success":
                raise BalenaError(f"balena release {release} of {self.fleet} is {found.get('status')}")
            self._commits[release] = str(found["commit"])
        return self._commits[release]

    def select(self, selector: Selector) -> dict[str, str | None]:
        options = {
            "$select": ["uuid", "device_name"],
            "$expand": {
                "device_tag": {"$select": ["tag_key", "value"]},
                "is_running__release": {"$select": ["commit", "raw_version"]},
                "is_pinned_on__release": {"$select": ["commit"]},
            },
        }
        found = self._call(
            f"listing the devices of {self.fleet}",
            self.sdk.models.device.get_all_by_application,
            self.fleet,
            options,
        )
        out: dict[str, str | None] = {}
        for device in found:
            if selector.matches(device_labels(device)):
                pinned = _first(device.get("is_pinned_on__release"))
                out[str(device["uuid"])] = str(pinned["commit"]) if pinned is not None else None
        return out

    def set_release(self, device: str, release: str) -> None:
        commit = self.commit_of(release)
        self._call(f"pinning {device} to {release}", self.sdk.models.device.pin_to_release, device, commit)

    def set_releases(self, devices: Sequence[str], release: str) -> None:
        for device in devices:  # the SDK pins one device per call
            self.set_release(device, release)

    def confirm(self, devices: Sequence[str]) -> bool:
        return True  # each pin was answered by balenaCloud before set_release returned

    def restore(self, device: str, previous: str | None) -> None:
        if previous:
            self._call(
                f"pinning {device} back to {previous}",
                self.sdk.models.device.pin_to_release,
                device,
                previous,
            )
        else:
            self._call(f"un-pinning {device}", self.sdk.models.device.track_application_release, device)

    def facts(self, release: str, devices: Sequence[str]) -> Mapping[str, DeviceFact]:
        """Device status, read at most every ``poll_s`` per release (the driver asks each second,
        and pages ask too: balenaCloud limits the request rate); devices not read yet (a new
        wave) are read at once. A device balenaCloud no longer lists is missing from the answer
        (the driver counts it offline)."""
        names = list(devices)
        with self._lock:
            now = self.clock()
            kept = self._facts.get(release)
            if kept is None or now - kept[0] >= self.poll_s:
                kept = (now, {})
                self._facts[release] = kept
            known = kept[1]
            missing = [d for d in names if d not in known]
        if missing:
            fetched = self._fetch(self.commit_of(release), missing)
            with self._lock:
                known.update(fetched)
        with self._lock:
            return {d: known[d] for d in names if d in known}

    def _fetch(self, commit: str, names: Sequence[str]) -> dict[str, DeviceFact]:
        out: dict[str, DeviceFact] = {}
        for start in range(0, len(names), CHUNK):
            part = list(names[start : start + CHUNK])
            options = {
                "$select": [
                    "uuid",
                    "is_online",
                    "api_heartbeat_state",
                    "overall_status",
                    "download_progress",
                ],
                "$filter": {"uuid": {"$in": part}},
                "$expand": {"is_running__release": {"$select": ["commit"]}},
            }
            found = self._call("reading device status", self.sdk.models.device.get_all, options)
            for device in found:
                out[str(device["uuid"])] = device_fact(device, commit)
        return out
