"""A small process supervisor for machines without systemd (``cityedge kiosk supervise``).

Each child is restarted within seconds when it exits or when its health check fails several
times in a row; quick repeated crashes back off up to ``max_delay_s``. SIGTERM/SIGINT stop the
children (SIGTERM, then SIGKILL) and the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    health: HealthCheck | None = None
    grace_s: float = 20.0
    """Seconds after a start before health checks count."""


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restarts: int = 0
    next_start: float = 0.0
    delay_s: float = field(default=0.5)


def http_ok(url: str, timeout: float = 1.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except OSError:
        return False


def page_alive(url: str, stale_s: float) -> bool:
    """The app answers and the page sent a heartbeat within ``stale_s`` (app down counts as alive:
    the app's own check restarts it; the browser must not be killed for that)."""
    try:
        with urllib.request.urlopen(url, timeout=1.5) as response:
            age = json.loads(response.read()).get("kiosk_heartbeat_age_s")
    except (OSError, ValueError):
        return True
    return age is not None and float(age) <= stale_s


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        min_delay_s: float = 0.5,
        max_delay_s: float = 5.0,
        check_every_s: float = 2.0,
        max_failures: int = 3,
    ) -> None:
        self.children = [_Child(spec, delay_s=min_delay_s) for spec in specs]
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.check_every_s = check_every_s
        self.max_failures = max_failures
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        next_check = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    self._reap(child, now)
                    if child.proc is None and now >= child.next_start:
                        self._start(child, now)
                if now >= next_check:
                    next_check = now + self.check_every_s
                    for child in self.children:
                        self._check(child, now)
                self._stop.wait(0.2)
        finally:
            for child in self.children:
                self._terminate(child)
        return 0

    def _start(self, child: _Child, now: float) -> None:
        log.info("starting %s", child.spec.name)
        child.proc = subprocess.Popen(child.spec.argv, start_new_session=True)
        child.started, child.failures = now, 0

    def _reap(self, child: _Child, now: float) -> None:
        if child.proc is None or child.proc.poll() is None:
            return
        code = child.proc.returncode
        quick = now - child.started < 10.0
        child.delay_s = min(child.delay_s * 2, self.max_delay_s) if quick else self.min_delay_s
        log.warning("%s exited (%s); restarting in %.1f s", child.spec.name, code, child.delay_s)
        child.proc, child.restarts = None, child.restarts + 1
        child.next_start = now + child.delay_s

    def _check(self, child: _Child, now: float) -> None:
        health = child.spec.health
        if child.proc is None or health is None or now - child.started < child.spec.grace_s:
            return
        if health():
            child.failures = 0
            return
        child.failures += 1
        if child.failures >= self.max_failures:
            log.warning("%s failed %d health checks: restarting it", child.spec.name, child.failures)
            self._terminate(child)

    @staticmethod
    def _terminate(child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5.0)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child's whole process group (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def kiosk_children(
    data_dir: Path, host: str, port: int, extra: list[str], *, browser: bool, chromium: str
) -> list[ChildSpec]:
    base = f"http://{host}:{port}"
    app = ChildSpec(
        "kiosk app",
        [
            sys.executable,
            "-m",
            "kiosk_ui",
            "serve",
            "--data-dir",
            str(data_dir),
            "--http",
            f"{host}:{port}",
            *extra,
        ],
        health=lambda: http_ok(f"{base}/healthz"),
        grace_s=15.0,
    )
    specs = [app]
    if browser:
        specs.append(
            ChildSpec(
                "chromium",
                [sys.executable, "-m", "kiosk_ui", "browser", "--url", f"{base}/", "--chromium", chromium],
            )
        )
    return specs


def run_supervisor(specs: Sequence[ChildSpec]) -> int:
    supervisor = Supervisor(specs)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return supervisor.run()
