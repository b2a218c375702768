"""The one interface a rollout drives a fleet through, and the backend of our own OTA.

A ``RolloutBackend`` knows four things about the devices of its fleet: which ones a selector picks
(with what to restore on abort), how to ask one device for a release, how to put back what it had,
and what each device reports about a release (as ``plan.DeviceFact``, so the same outcome
accounting, halt and soak rules apply to every backend). The rollout state itself always lives
in the fleet database (``store``), whatever the backend.

- ``OtaBackend``: our devices. The release goes into the device's signed desired state
  (``DesiredService``); facts are the devices' ``ota.*`` reports folded in ``device_ota``.
- ``fleet.rollouts.balena.BalenaBackend``: balenaOS devices, pinned to a release with balena-sdk.

``build_backend`` picks one per fleet from ``FleetConfig.rollout_backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine

from fleet.rollouts.facts import device_facts, select_devices
from fleet.rollouts.plan import DeviceFact, Selector

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 10.0
"""How long a batch's desired states may take to be acknowledged by the broker."""

if TYPE_CHECKING:
    from fleet.config import FleetConfig
    from fleet.desired import DesiredService


class RolloutBackend(Protocol):
    """How a rollout reaches the devices of one fleet."""

    name: str

    def select(self, selector: Selector) -> dict[str, str | None]:
        """Devices ``selector`` picks -> what ``restore`` puts back on abort (None: nothing)."""
        ...

    def set_release(self, device: str, release: str) -> None:
        """Ask ``device`` to run ``release`` (idempotent: a restarted worker may ask twice)."""
        ...

    def set_releases(self, devices: Sequence[str], release: str) -> None:
        """``set_release`` for a batch of devices (in one go where the backend can)."""
        ...

    def confirm(self, devices: Sequence[str]) -> bool:
        """Whether the request just made for ``devices`` has left the fleet for good (e.g. the
        broker acknowledged their desired states); the driver marks them targeted only then."""
        ...

    def restore(self, device: str, previous: str | None) -> None:
        """Abort: give ``device`` back what ``select`` returned for it."""
        ...

    def facts(self, release: str, devices: Sequence[str]) -> Mapping[str, DeviceFact]:
        """Each device's online state and latest report about ``release``."""
        ...


class OtaBackend:
    """Our own devices: signed desired state out, ``ota.*`` events back (docs/ota.md)."""

    name = "ota"

    def __init__(self, engine: Engine, desired: DesiredService) -> None:
        self.engine = engine
        self.desired = desired

    def select(self, selector: Selector) -> dict[str, str | None]:
        return select_devices(self.engine, selector)  # the version each runs now

    def set_release(self, device: str, release: str) -> None:
        from fleet.desired import DesiredNotPublished

        try:
            self.desired.ensure_release(device, release)  # once, even with several workers
        except DesiredNotPublished as exc:  # stored: published again by the maintenance loop
            log.warning("%s", exc)

    def set_releases(self, devices: Sequence[str], release: str) -> None:
        from fleet.desired import DesiredNotPublished

        try:
            self.desired.ensure_releases(devices, release)  # one transaction per batch
        except DesiredNotPublished as exc:
            log.warning("%s", exc)

    def confirm(self, devices: Sequence[str]) -> bool:
        return self.desired.acknowledged(devices, ACK_TIMEOUT_S)

    def restore(self, device: str, previous: str | None) -> None:
        if previous:
            self.desired.set_release(device, previous, allow_downgrade=True)
        else:
            self.desired.clear_release(device)

    def facts(self, release: str, devices: Sequence[str]) -> Mapping[str, DeviceFact]:
        return device_facts(self.engine, release, devices)


def build_backend(config: FleetConfig, engine: Engine, desired: DesiredService) -> RolloutBackend:
    """The backend ``config.rollout_backend`` names (``ota`` or ``balena``)."""
    if config.rollout_backend == "balena":
        from fleet.rollouts.balena import BalenaBackend, load_balena

        return BalenaBackend(load_balena(config), config.balena_fleet or "", poll_s=config.balena_poll_s)
    return OtaBackend(engine, desired)
