"""State scripts, as in Mender: programs the device owner drops in a directory, run when the
updater enters a phase (``<phase>_enter*``, e.g. ``downloading_enter_10-notify``), in name order.

A script that exits non-zero fails the update at that phase (``ota.failed``, code ``script``).
Scripts must be idempotent: after a power cut the phase, and so its scripts, run again.
Phases: downloading, verifying, installing, restarting, trial, commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.ota.errors import OtaError

SCRIPT_TIMEOUT_S = 120.0


class ScriptFailed(OtaError):
    """A state script refused the update or could not run."""

    code = "script"


class StateScripts:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def run(self, phase: str, when: str, env: dict[str, str]) -> None:
        if self.directory is None or not self.directory.is_dir():
            return
        prefix = f"{phase}_{when}"
        for script in sorted(self.directory.iterdir()):
            if not script.name.startswith(prefix) or not os.access(script, os.X_OK):
                continue
            try:
                done = subprocess.run(
                    [str(script), phase, when],
                    env={**os.environ, **env, "CITYEDGE_OTA_PHASE": phase},
                    capture_output=True,
                    text=True,
                    timeout=SCRIPT_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ScriptFailed(f"state script {script.name} could not run: {exc}") from exc
            if done.returncode != 0:
                said = (done.stderr.strip() or done.stdout.strip())[-200:]
                raise ScriptFailed(
                    f"state script {script.name} refused the update (exit {done.returncode}): {said}"
                )
