"""RoleRelay: commands handed to a role process beside the agent, answered within a deadline, and a
sentence for each way it can fail."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent.errors import CommandFailed, LocalApiError
from agent.rolerelay import RoleRelay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _serve_once(relay: RoleRelay, answer: Any) -> threading.Thread:
    """A role process that polls once and answers with ``answer(command)``."""

    def run() -> None:
        command = relay.poll(["snapshot"], timeout=10)
        assert command is not None
        relay.result(command["id"], *answer(command))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_polling(relay: RoleRelay) -> None:
    for _ in range(500):
        if relay._polling["snapshot"] > 0:  # the role process is inside its poll
            return
        threading.Event().wait(0.01)
    raise AssertionError("the role process never polled")


def test_a_command_nobody_serves_is_refused_at_once() -> None:
    with pytest.raises(CommandFailed, match=r"camera process \(cityedge camera run\) is not running"):
        RoleRelay().relay("snapshot", {})


def test_the_role_process_answers_with_its_result() -> None:
    relay = RoleRelay()
    role = _serve_once(relay, lambda c: ("ok", {"args": c["args"], "name": c["name"]}, None))
    _wait_polling(relay)
    assert relay.relay("snapshot", {"width": 320}) == {"args": {"width": 320}, "name": "snapshot"}
    role.join(5)


def test_the_role_process_error_is_the_command_error() -> None:
    relay = RoleRelay()
    role = _serve_once(relay, lambda c: ("error", {}, "no camera frame yet"))
    _wait_polling(relay)
    with pytest.raises(CommandFailed, match=r"^snapshot: no camera frame yet$"):
        relay.relay("snapshot", {})
    role.join(5)


def test_no_answer_in_time_is_said_and_a_late_answer_is_refused() -> None:
    relay = RoleRelay(answer_timeout_s=0.2)
    taken: list[dict[str, Any]] = []

    def silent() -> None:
        command = relay.poll(["snapshot"], timeout=10)
        assert command is not None
        taken.append(command)

    role = threading.Thread(target=silent, daemon=True)
    role.start()
    _wait_polling(relay)
    with pytest.raises(CommandFailed, match=r"did not answer 'snapshot' within 0\.2 s"):
        relay.relay("snapshot", {})
    role.join(5)
    with pytest.raises(LocalApiError, match="timed out or was answered"):
        relay.result(taken[0]["id"], "ok", {}, None)


def test_a_role_process_that_stopped_polling_is_named() -> None:
    clock = Clock()
    relay = RoleRelay(idle_grace_s=5, answer_timeout_s=0.1, clock=clock)
    assert relay.poll(["snapshot"], timeout=0.01) is None
    clock.now += 3  # between two polls: the command waits for the next one (and times out here)
    with pytest.raises(CommandFailed, match="did not answer"):
        relay.relay("snapshot", {})
    clock.now += 60
    with pytest.raises(CommandFailed, match="stopped asking for commands 63 s ago"):
        relay.relay("snapshot", {})


def test_commands_for_other_names_wait_for_their_own_process() -> None:
    relay = RoleRelay(answer_timeout_s=0.2)
    assert relay.poll(["other"], timeout=0.01) is None
    role = threading.Thread(target=lambda: relay.poll(["other"], timeout=0.5), daemon=True)
    role.start()
    with pytest.raises(CommandFailed, match="is not running"):
        relay.relay("snapshot", {})
    role.join(5)
    with pytest.raises(LocalApiError, match="at least one command name"):
        relay.poll([], timeout=0.01)
