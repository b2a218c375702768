"""Topic names of contract version 1 (``PROTOCOL.md``).

``Topics`` builds the topics for one prefix; ``Topics.parse`` turns a received topic back into
its parts so that the fleet can route it without string juggling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from protocol.errors import TopicError

DEFAULT_PREFIX = "city/v1"
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
EVENT_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

Family = Literal[
    "status",
    "telemetry",
    "events",
    "shadow/reported",
    "shadow/desired",
    "commands/req",
    "commands/res",
    "rpc/req",
    "rpc/res",
]

DEVICE_PUBLISHES: tuple[Family, ...] = (
    "status",
    "telemetry",
    "events",
    "shadow/reported",
    "commands/res",
    "rpc/req",
)
DEVICE_SUBSCRIBES: tuple[Family, ...] = ("shadow/desired", "commands/req", "rpc/res")


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise TopicError(
            f"invalid device id {device_id!r}: use 3-63 lowercase letters, digits and '-', "
            "starting with a letter or digit (e.g. kiosk-hn-btl-0001)"
        )
    return device_id


def check_event_kind(kind: str) -> str:
    if not EVENT_KIND_RE.match(kind):
        raise TopicError(
            f"invalid event kind {kind!r}: use lowercase letters, digits, '.', '_' or '-' "
            "(e.g. traffic.violation)"
        )
    return kind


@dataclass(frozen=True)
class ParsedTopic:
    device: str
    family: Family
    kind: str | None = None


@dataclass(frozen=True)
class Topics:
    """Topic builder for one prefix (``city/v1`` unless configured)."""

    prefix: str = DEFAULT_PREFIX

    def device_root(self, device: str) -> str:
        return f"{self.prefix}/devices/{check_device_id(device)}"

    def status(self, device: str) -> str:
        return f"{self.device_root(device)}/status"

    def telemetry(self, device: str) -> str:
        return f"{self.device_root(device)}/telemetry"

    def event(self, device: str, kind: str) -> str:
        return f"{self.device_root(device)}/events/{check_event_kind(kind)}"

    def shadow_reported(self, device: str) -> str:
        return f"{self.device_root(device)}/shadow/reported"

    def shadow_desired(self, device: str) -> str:
        return f"{self.device_root(device)}/shadow/desired"

    def commands_req(self, device: str) -> str:
        return f"{self.device_root(device)}/commands/req"

    def commands_res(self, device: str) -> str:
        return f"{self.device_root(device)}/commands/res"

    def rpc_req(self, device: str) -> str:
        return f"{self.device_root(device)}/rpc/req"

    def rpc_res(self, device: str) -> str:
        return f"{self.device_root(device)}/rpc/res"

    def fleet_filters(self) -> list[str]:
        """Wildcard filters for everything devices publish (what the fleet ingests)."""
        root = f"{self.prefix}/devices/+"
        return [
            f"{root}/status",
            f"{root}/telemetry",
            f"{root}/events/+",
            f"{root}/shadow/reported",
            f"{root}/commands/res",
            f"{root}/rpc/req",
        ]

    @staticmethod
    def shared(group: str, topic_filter: str) -> str:
        """A shared subscription (``$share/GROUP/FILTER``) so several workers split the load."""
        return f"$share/{group}/{topic_filter}"

    def parse(self, topic: str) -> ParsedTopic:
        """Split a contract topic into device, family and (for events) kind.

        Raises TopicError for anything outside the contract.
        """
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is outside prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) < 2:
            raise TopicError(f"topic {topic!r} has no message family")
        device = check_device_id(parts[0])
        rest = parts[1:]
        if rest[0] == "events":
            if len(rest) != 2:
                raise TopicError(f"event topic {topic!r} must end in events/KIND")
            return ParsedTopic(device, "events", check_event_kind(rest[1]))
        family = "/".join(rest)
        for known in (*DEVICE_PUBLISHES, *DEVICE_SUBSCRIBES):
            if family == known and known != "events":
                return ParsedTopic(device, known)
        raise TopicError(f"topic {topic!r}: unknown message family {family!r}")
