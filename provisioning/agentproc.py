"""Start, find and stop the agent of an enrolled device.

With systemd (and the ``cityedge-agent.service`` unit installed) a drop-in points the unit at the
enrolment's config and systemd runs it; otherwise ``cityedge agent run --config ...`` is spawned
detached and its pid kept in ``DATA_DIR/provision-agent.pid``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError
from provisioning.files import DeviceFiles

UNIT = "cityedge-agent.service"
DROP_IN = Path("/etc/systemd/system") / f"{UNIT}.d" / "10-provision.conf"


def cityedge_command() -> list[str]:
    """How to run ``cityedge`` from this installation."""
    exe = Path(sys.executable).with_name("cityedge")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("cityedge")
    if found:
        return [found]
    return [sys.executable, "-c", "from cityedge.cli import main; main()"]


def systemd_unit_installed() -> bool:
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    probe = subprocess.run(["systemctl", "cat", UNIT], capture_output=True, check=False, timeout=10)
    return probe.returncode == 0


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise ProvisionError(
            f"systemctl {' '.join(args)} failed: {done.stderr.strip() or done.returncode}",
            "run the command as root (sudo), or start the agent by hand: cityedge agent run --config ...",
        )


def start_with_systemd(files: DeviceFiles) -> str:
    command = " ".join([*cityedge_command(), "agent", "run", "--config", str(files.config.resolve())])
    DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    DROP_IN.write_text(
        f"# written by cityedge provision enroll\n[Service]\nExecStart=\nExecStart={command}\n"
    )
    _systemctl("daemon-reload")
    _systemctl("enable", UNIT)
    _systemctl("restart", UNIT)
    return f"started by systemd ({UNIT})"


def spawn_detached(files: DeviceFiles, settle_s: float = 1.5) -> str:
    """``cityedge agent run --config DATA_DIR/agent.toml`` in its own session; output to a log."""
    logs = files.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "agent-console.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*cityedge_command(), "agent", "run", "--config", str(files.config.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    files.pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-600:].strip()
            raise ProvisionError(
                f"the agent stopped right after starting (exit code {proc.returncode}): {tail}",
                f"see {log_path}; fix the problem, then: cityedge agent run --config {files.config}",
            )
        time.sleep(0.1)
    return f"started in the background (pid {proc.pid}, log {log_path})"


def start_agent(files: DeviceFiles) -> str:
    if systemd_unit_installed():
        return start_with_systemd(files)
    return spawn_detached(files)


def _our_pid(files: DeviceFiles) -> int | None:
    """The pid we spawned, if that process still runs our agent (pids get reused)."""
    try:
        pid = int(files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return None
    return pid if b"agent" in cmdline and str(files.config.resolve()).encode() in cmdline else None


def agent_status(files: DeviceFiles) -> dict[str, Any]:
    """``{"running": bool, "how": ..., "link": {...}?}`` from the local API, else the pid file."""
    from agent.errors import LocalApiError
    from agent.localapi import LocalApiClient

    try:
        status = LocalApiClient(files.data_dir, timeout=3.0).status()
        return {"running": True, "how": "answers on its local API", "link": status.get("link", {})}
    except LocalApiError as exc:
        pid = _our_pid(files)
        if pid is not None:
            return {"running": True, "how": f"process {pid} (local API not answering: {exc})"}
        return {"running": False, "how": str(exc)}


def stop_agent(files: DeviceFiles, timeout: float = 10.0) -> str:
    if systemd_unit_installed():
        _systemctl("disable", "--now", UNIT)
        DROP_IN.unlink(missing_ok=True)
        return f"stopped and disabled {UNIT}"
    pid = _our_pid(files)
    if pid is None:
        return "no agent started by provisioning was running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    files.pid.unlink(missing_ok=True)
    return f"stopped the agent (pid {pid})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not running
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
