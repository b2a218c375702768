"""Command answering for a simulated device: every command id is answered exactly once.

Pure logic, no I/O: ``CommandBook.answer(payload)`` returns the ``CommandResult`` to publish on
``commands/res``. A re-delivered id gets the stored answer back and its command is not run again.
With a ``verify`` function (a device given the fleet's keys), an unsigned or badly signed command
is answered ``rejected``, as by an enrolled agent.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from protocol.errors import PayloadError
from protocol.models import Command, CommandResult, decode
from protocol.timefmt import parse_ts, utc_now


class CommandFailed(Exception):
    """A handler could not do what the command asked; the message goes into ``error``."""


Handler = Callable[[Command], dict[str, Any]]
Verify = Callable[[dict[str, Any]], None]
"""Checks a command's signature and window (raises ``agent.errors.CommandRejected`` with the reason)."""


def _raw_id(payload: bytes) -> str | None:
    """The ``id`` of a payload that failed validation, when there is a usable one."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None


class CommandBook:
    """Remembers the last ``capacity`` answers and nonces of one device."""

    def __init__(
        self, handlers: Mapping[str, Handler], capacity: int = 1024, verify: Verify | None = None
    ) -> None:
        self._handlers = dict(handlers)
        self._verify = verify
        self._capacity = capacity
        self._answers: OrderedDict[str, CommandResult] = OrderedDict()
        self._nonces: OrderedDict[str, str] = OrderedDict()
        self.executed = 0
        self.redelivered = 0

    def answer(self, payload: bytes, topic: str | None = None) -> CommandResult | None:
        """The answer to publish for ``payload``, or None when it has no id to answer to."""
        try:
            command = decode(Command, payload, topic=topic)
        except PayloadError as exc:
            cid = _raw_id(payload)
            if cid is None:
                return None
            if cid in self._answers:
                return self._again(cid)
            return self._store(CommandResult(id=cid, status="rejected", error=str(exc)))
        if command.id in self._answers:
            return self._again(command.id)
        if self._verify is not None:
            from agent.errors import CommandRejected

            try:
                self._verify(json.loads(payload))
            except CommandRejected as exc:
                return self._store(CommandResult(id=command.id, status="rejected", error=str(exc)))
        return self._store(self._run(command))

    def _again(self, cid: str) -> CommandResult:
        self.redelivered += 1
        return self._answers[cid]

    def _run(self, command: Command) -> CommandResult:
        if parse_ts(command.expires_at) <= utc_now():
            return CommandResult(id=command.id, status="rejected", error=f"expired at {command.expires_at}")
        if command.nonce in self._nonces:
            reason = f"replayed nonce (first used by {self._nonces[command.nonce]})"
            return CommandResult(id=command.id, status="rejected", error=reason)
        self._remember(self._nonces, command.nonce, command.id)
        handler = self._handlers.get(command.name)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return CommandResult(
                id=command.id, status="error", error=f"unknown command {command.name!r} (known: {known})"
            )
        self.executed += 1
        try:
            return CommandResult(id=command.id, status="ok", result=handler(command))
        except CommandFailed as exc:
            return CommandResult(id=command.id, status="error", error=str(exc))

    def _store(self, result: CommandResult) -> CommandResult:
        self._remember(self._answers, result.id, result)
        return result

    def _remember(self, book: OrderedDict[str, Any], key: str, value: Any) -> None:
        book[key] = value
        while len(book) > self._capacity:
            book.popitem(last=False)
