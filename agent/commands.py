"""City commands: ``commands/req`` in, exactly one answer per id on ``commands/res``.

Order of checks for each message (one worker thread, so the MQTT loop never waits on a command):
  1. parse (size, UTF-8, JSON object with an ``id``); garbage is logged and counted, not answered;
  2. id already answered → the stored answer is published again, the command is NOT run again
     (an id that started but never finished is answered "interrupted");
  3. shape (``protocol.models.Command``) → ``rejected`` naming the bad field;
  4. ``CommandVerifier.verify`` (signature, expiry, replay) → ``rejected`` with its reason;
  5. dispatch by name: unknown → ``error``; ``CommandFailed`` → ``error``; else ``ok``.
Answers are stored (``ResultStore``) before they are published. A handler may return an
``Outcome`` whose ``then`` runs only after the answer was acknowledged by the broker (restart,
reboot).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from agent.errors import CommandFailed, CommandRejected, LinkDown
from agent.guard import Guard
from agent.link import Link
from agent.results import ResultStore
from protocol.errors import PayloadError
from protocol.models import Command, CommandResult, CommandStatus
from protocol.timefmt import format_ts, parse_ts, utc_now

log = logging.getLogger(__name__)

NO_KEYS_REASON = "no fleet signing keys configured"
NOT_AVAILABLE = "not available on this device yet"


class CommandVerifier(Protocol):
    """Decides whether a command (or desired state) may be trusted; raises CommandRejected."""

    def verify(self, message: Mapping[str, Any]) -> None: ...


class AcceptUnsigned:
    """Development verifier: accepts unsigned messages but still rejects expired ones."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock

    def verify(self, message: Mapping[str, Any]) -> None:
        value = message.get("expires_at")
        if value is None:
            return
        if not isinstance(value, str):
            raise CommandRejected("field 'expires_at' is not a time")
        try:
            expires = parse_ts(value)
        except ValueError as exc:
            raise CommandRejected(f"field 'expires_at': {exc}") from exc
        if self._clock() > expires:
            raise CommandRejected(f"command expired at {format_ts(expires)}")


class RejectAll:
    """Used when signatures are required but no verifier (fleet keys) is available."""

    def __init__(self, reason: str = NO_KEYS_REASON) -> None:
        self.reason = reason

    def verify(self, message: Mapping[str, Any]) -> None:
        raise CommandRejected(self.reason)


@dataclass
class Outcome:
    """A handler's result plus an action to run once the answer has reached the broker."""

    result: dict[str, Any]
    then: Callable[[], None] | None = None


Handler = Callable[[dict[str, Any]], "dict[str, Any] | Outcome"]


def not_available(_args: dict[str, Any]) -> dict[str, Any]:
    raise CommandFailed(NOT_AVAILABLE)


def parse_object(payload: bytes, topic: str, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise PayloadError(f"{len(payload)} bytes is over the {max_bytes}-byte limit", topic=topic)
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError("not UTF-8", topic=topic) from exc
    except (ValueError, RecursionError) as exc:
        raise PayloadError("not JSON", topic=topic) from exc
    if not isinstance(obj, dict):
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}", topic=topic)
    return obj


class CommandProcessor:
    def __init__(
        self, link: Link, store: ResultStore, verifier: CommandVerifier, guard: Guard, max_bytes: int
    ) -> None:
        self.link = link
        self.store = store
        self.verifier = verifier
        self._guard = guard
        self._max_bytes = max_bytes
        self._handlers: dict[str, Handler] = {"snapshot": not_available, "update": not_available}
        self._req_topic = link.topics.commands_req(link.device_id)
        self._res_topic = link.topics.commands_res(link.device_id)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self.counts: Counter[str] = Counter()

    def register_handler(self, name: str, handler: Handler) -> None:
        """Add or replace the handler of command ``name`` (camera: snapshot, OTA: update...)."""
        self._handlers[name] = handler

    def handlers(self) -> list[str]:
        return sorted(self._handlers)

    def handler(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(10)

    def submit(self, payload: bytes) -> None:
        """Queue one commands/req message (called from the MQTT thread)."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.counts["dropped"] += 1
            log.error("command queue full: a command was dropped (the city will have to re-send it)")

    def resend_unsent(self) -> None:
        """Queue the answers that could not be published while the link was down."""
        self._queue.put(b"")

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            if payload == b"":
                self._guard("commands: resend answers", self._flush_unsent)
            else:
                self._guard(f"message on {self._req_topic}", functools.partial(self.process, payload))

    def process(self, payload: bytes) -> None:
        obj = parse_object(payload, self._req_topic, self._max_bytes)
        command_id = obj.get("id")
        name = obj.get("name") if isinstance(obj.get("name"), str) else "?"
        if not isinstance(command_id, str) or not 0 < len(command_id) <= 64:
            raise PayloadError("command has no valid 'id' (cannot be answered)", topic=self._req_topic)
        known, stored = self.store.lookup(command_id)
        if known:
            self._redelivered(command_id, str(name), stored)
            return
        try:
            command = Command.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(command)"
            self._answer(
                command_id, str(name), "rejected", error=f"bad command: field '{field}': {first['msg']}"
            )
            return
        try:
            self.verifier.verify(obj)
        except CommandRejected as exc:
            self._answer(command.id, command.name, "rejected", error=exc.reason)
            return
        self._dispatch(command)

    def _redelivered(self, command_id: str, name: str, stored: bytes | None) -> None:
        self.counts["redelivered"] += 1
        if stored is None:
            self._answer(command_id, name, "error", error="interrupted: the agent stopped while running it")
            return
        log.info("command %s re-delivered: stored answer sent again, not run again", command_id)
        self._send(command_id, stored)

    def _dispatch(self, command: Command) -> None:
        handler = self._handlers.get(command.name)
        if handler is None:
            self._answer(command.id, command.name, "error", error=f"unknown command {command.name!r}")
            return
        self.store.start(command.id, command.name)
        log.info("running command %s (%s)", command.name, command.id)
        outcome = self._guard(f"command {command.name}", lambda: self._invoke(handler, command.args))
        if outcome is None:
            self._answer(command.id, command.name, "error", error="internal error in the agent (see its log)")
            return
        if isinstance(outcome, str):
            self._answer(command.id, command.name, "error", error=outcome)
            return
        self._answer(command.id, command.name, "ok", result=outcome.result, wait=outcome.then is not None)
        if outcome.then is not None:
            outcome.then()

    @staticmethod
    def _invoke(handler: Handler, args: dict[str, Any]) -> Outcome | str:
        try:
            out = handler(args)
        except CommandFailed as exc:
            return str(exc)
        outcome = out if isinstance(out, Outcome) else Outcome(out)
        try:
            json.dumps(outcome.result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return f"the command's result is not plain JSON ({exc})"
        return outcome

    def _answer(
        self,
        command_id: str,
        name: str,
        status: CommandStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        wait: bool = False,
    ) -> bytes:
        self.counts[status] += 1
        if status != "ok":
            log.warning("command %s (%s) answered %s: %s", name, command_id, status, error)
        payload = CommandResult(id=command_id, status=status, result=result or {}, error=error).to_bytes()
        self.store.put(command_id, name, payload)
        self._send(command_id, payload, wait=wait)
        return payload

    def _send(self, command_id: str, payload: bytes, wait: bool = False) -> None:
        if wait:
            if self.link.publish_wait(self._res_topic, payload, qos=1, timeout=5.0):
                self.store.mark_sent(command_id)
            return
        try:
            self.link.publish(self._res_topic, payload, qos=1)
        except LinkDown:
            log.info("answer to command %s kept until the link is back", command_id)
            return
        self.store.mark_sent(command_id)

    def _flush_unsent(self) -> None:
        for command_id, payload in self.store.unsent():
            if not self.link.connected:
                return
            self._send(command_id, payload)
