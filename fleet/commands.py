"""Commands from the city to a device: build, sign, record, publish; results arrive through ingest."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from pydantic import ValidationError
from ulid import ULID

from fleet.store import Row, Store
from protocol.models import Command
from protocol.timefmt import format_ts, utc_now
from protocol.topics import Topics


class CommandSigner(Protocol):
    """Signs a command (or desired state) dict; returns the dict to publish (with ``sig``)."""

    def sign(self, message: dict[str, Any]) -> dict[str, Any]: ...


class UnsignedSigner:
    """Development signer: publishes commands unsigned (agents must be set to accept them)."""

    def sign(self, message: dict[str, Any]) -> dict[str, Any]:
        return dict(message)


class CommandError(Exception):
    """A command could not be issued; the message says why."""


class UnknownDevice(CommandError):
    """The device has never been seen by the fleet."""


class InvalidCommand(CommandError):
    """The name, arguments or lifetime are not acceptable."""


class SigningFailed(CommandError):
    """The signer could not sign the command (key missing or unreadable)."""


Publish = Callable[[str, bytes], None]


class CommandService:
    """Issues commands and reads their state back."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        signer: CommandSigner,
        topics: Topics,
        *,
        default_ttl_s: float = 60.0,
        max_ttl_s: float = 86_400.0,
        on_issued: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.signer = signer
        self.topics = topics
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self.on_issued = on_issued or (lambda: None)

    def issue(self, device: str, name: str, args: dict[str, Any], ttl_s: float | None = None) -> Row:
        """Record a pending command, sign it and publish it on the device's ``commands/req``."""
        if self.store.device(device) is None:
            raise UnknownDevice(f"device {device!r} is not known to the fleet (it has never connected)")
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.max_ttl_s:
            raise InvalidCommand(f"ttl_s must be between 0 and {self.max_ttl_s:g} seconds, got {ttl:g}")
        issued = utc_now()
        expires = issued + timedelta(seconds=ttl)
        try:
            command = Command(
                id=str(ULID()),
                name=name,
                args=args,
                issued_at=format_ts(issued),
                expires_at=format_ts(expires),
                nonce=secrets.token_urlsafe(16),
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidCommand(f"field '{first['loc'][0]}': {first['msg']}") from exc
        try:
            message = self.signer.sign(command.to_dict())
        except Exception as exc:  # the signer is a plug-in: any failure means "not signed"
            raise SigningFailed(f"could not sign the command: {exc}") from exc
        row = {
            "id": command.id,
            "device": device,
            "name": name,
            "args": args,
            "issued_at": issued,
            "expires_at": expires,
            "nonce": command.nonce,
            "status": "pending",
        }
        self.store.insert_command(row)
        payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        self.publish(self.topics.commands_req(device), payload)
        self.on_issued()
        return row

    def get(self, command_id: str) -> Row | None:
        return self.store.command(command_id)

    def expire(self, grace_s: float) -> int:
        """Mark commands unanswered ``grace_s`` after their expiry as expired."""
        return self.store.expire_commands(utc_now() - timedelta(seconds=grace_s))
