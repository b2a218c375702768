"""City commands served by a role process beside the agent (camera: ``snapshot``).

The agent is the only MQTT client on a device, but some commands need what only a role process has
(the camera's current frame). The role process asks the agent's local API for commands by name
(``poll_command``, a long poll) and answers each one (``command_result``); the agent's command
handler for that name waits for the answer with a deadline. Every failure is a sentence a
technician understands: no role process asking for that command, a role process that stopped
asking, or one that did not answer in time.

Pure enough to test without sockets: the clock is passed in, and ``relay``/``poll``/``result`` are
plain method calls (the local API and the command processor call them from their own threads).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from agent.commands import CommandProcessor, not_available
from agent.errors import CommandFailed, LocalApiError
from agent.localapi import LocalApiServer, Req

ROLE_PROCESS = {"snapshot": "the camera process (cityedge camera run)"}
"""Who serves a command, in the words of an error message."""


def _who(name: str) -> str:
    return ROLE_PROCESS.get(name, f"the role process that serves {name!r}")


@dataclass
class _Pending:
    name: str
    args: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    answer: dict[str, Any] | None = None


class RoleRelay:
    """Hands commands to the role process that polls for them and waits for its answers."""

    def __init__(
        self,
        *,
        answer_timeout_s: float = 10.0,
        idle_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.answer_timeout_s = answer_timeout_s
        self.idle_grace_s = idle_grace_s
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._waiting: dict[str, _Pending] = {}
        self._polling: Counter[str] = Counter()
        self._last_poll: dict[str, float] = {}

    def handler(self, name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The command handler for ``name``: relays it and returns the role process's result."""
        return lambda args: self.relay(name, args)

    def relay(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._check_served(name)
            item = _Pending(name, dict(args))
            self._queue.append(item)
            self._waiting[item.id] = item
            self._cond.notify_all()
            answered = self._cond.wait_for(lambda: item.answer is not None, self.answer_timeout_s)
            self._waiting.pop(item.id, None)
            if item in self._queue:
                self._queue.remove(item)
        if not answered or item.answer is None:
            raise CommandFailed(f"{_who(name)} did not answer {name!r} within {self.answer_timeout_s:g} s")
        if item.answer["status"] != "ok":
            raise CommandFailed(f"{name}: {item.answer.get('error') or 'failed without a reason'}")
        return dict(item.answer.get("result") or {})

    def _check_served(self, name: str) -> None:
        if self._polling[name] > 0:
            return
        last = self._last_poll.get(name)
        if last is None:
            raise CommandFailed(f"{_who(name)} is not running: nothing on this device serves {name!r}")
        idle = self._clock() - last
        if idle > self.idle_grace_s:
            raise CommandFailed(f"{_who(name)} stopped asking for commands {idle:.0f} s ago (is it running?)")

    def poll(self, names: Iterable[str], timeout: float) -> dict[str, Any] | None:
        """The next command for one of ``names`` (``{"id", "name", "args"}``), or None after ``timeout``."""
        wanted = set(names)
        if not wanted:
            raise LocalApiError("poll_command needs at least one command name")

        def first() -> _Pending | None:
            return next((p for p in self._queue if p.name in wanted), None)

        with self._cond:
            self._polling.update(wanted)
            try:
                found = self._cond.wait_for(first, timeout)
                if found is not None:
                    self._queue.remove(found)
                    return {"id": found.id, "name": found.name, "args": found.args}
                return None
            finally:
                self._polling.subtract(wanted)
                now = self._clock()
                for name in wanted:
                    self._last_poll[name] = now

    def result(self, command_id: str, status: str, result: dict[str, Any], error: str | None) -> None:
        """The role process's answer to a command it polled."""
        with self._cond:
            item = self._waiting.get(command_id)
            if item is None:
                raise LocalApiError(
                    f"no command {command_id!r} is waiting for an answer (it timed out or was answered)"
                )
            item.answer = {"status": status, "result": result, "error": error}
            self._cond.notify_all()


class PollCommandReq(Req):
    names: list[str] = Field(min_length=1, max_length=16, description="Command names this process serves.")
    timeout: float = Field(default=5.0, gt=0, le=30, description="Seconds to wait for a command.")


class CommandResultReq(Req):
    id: str = Field(min_length=1, max_length=64, description="The id from poll_command.")
    status: Literal["ok", "error"] = Field(description="ok, or error with a reason.")
    result: dict[str, Any] = Field(default_factory=dict, description="The command's result.")
    error: str | None = Field(default=None, max_length=1000, description="Why it failed.")


def serve_role_commands(
    localapi: LocalApiServer, relay: RoleRelay, commands: CommandProcessor, preset: Iterable[str] = ()
) -> None:
    """Offer ``poll_command``/``command_result`` on the local API.

    ``preset`` names are relayed from the start (a camera's ``snapshot``), so that while its role
    process is down the city is told so. A role process may serve any other name the agent does not
    run itself; it can never take over a built-in command (reboot, set_config, ...).
    """
    relayed: set[str] = set()
    lock = threading.Lock()

    def claim(name: str) -> None:
        with lock:
            if name in relayed:
                return
            current = commands.handler(name)
            if current is not None and current is not not_available:
                raise LocalApiError(f"the agent runs {name!r} itself; a role process cannot serve it")
            commands.register_handler(name, relay.handler(name))
            relayed.add(name)

    def poll(req: PollCommandReq) -> dict[str, Any] | None:
        for name in req.names:
            claim(name)
        return relay.poll(req.names, req.timeout)

    for name in preset:
        if commands.handler(name) in (None, not_available):  # a plugin may serve it in the agent
            claim(name)
    localapi.add_op("poll_command", PollCommandReq, poll)
    localapi.add_op(
        "command_result", CommandResultReq, lambda r: relay.result(r.id, r.status, r.result, r.error)
    )
