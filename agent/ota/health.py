"""The health gate a new release must pass before it is committed.

Healthy means, within ``ota.health_timeout_s`` of the start of the trial: the agent is up (this code
runs in it), the MQTT link to the city is connected, and the release's own ``health_check``
program (if its manifest names one: e.g. "is the kiosk app answering") exits 0.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from protocol.release import ReleaseManifest

CHECK_TIMEOUT_S = 30.0


def run_health_check(argv: list[str], slot_dir: Path, timeout_s: float) -> str | None:
    """Run the release's health check; None when it passed, else the reason in words."""
    command = [part.replace("{python}", sys.executable).replace("{slot}", str(slot_dir)) for part in argv]
    try:
        done = subprocess.run(
            command, cwd=slot_dir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return f"the release's health check did not answer within {timeout_s:.0f} s"
    except OSError as exc:
        return f"the release's health check could not be started: {exc.strerror or exc}"
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or ["no output"]
        return f"the release's health check failed (exit {done.returncode}): {said[0][:200]}"
    return None


def health_gate(
    manifest: ReleaseManifest | None,
    slot_dir: Path,
    connected: Callable[[], bool],
    timeout_s: float,
    stop: threading.Event,
) -> str | None:
    """Wait for the conditions; None when healthy, else why not (in words)."""
    deadline = time.monotonic() + timeout_s
    while not connected():
        if stop.wait(0.2):
            return "the agent stopped during the health check"
        if time.monotonic() > deadline:
            return f"the new version could not connect to the city broker within {timeout_s:.0f} s"
    if manifest is not None and manifest.health_check:
        left = max(1.0, min(CHECK_TIMEOUT_S, deadline - time.monotonic()))
        return run_health_check(manifest.health_check, slot_dir, left)
    return None
