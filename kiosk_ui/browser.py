"""Chromium in kiosk mode, watched (``cityedge kiosk browser``, run by systemd or the supervisor).

Chromium gets a fresh profile in a temporary directory (deleted on exit) and runs incognito, so
nothing of a resident survives a restart. While the page sends heartbeats the watchdog is fed
(``WATCHDOG=1`` under systemd); when the page falls silent (renderer crash, hang) Chromium is
killed and this command exits non-zero, so its supervisor starts a new one within seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

from kiosk_ui.supervisor import http_ok, page_alive

log = logging.getLogger(__name__)

KIOSK_FLAGS = (
    "--kiosk",
    "--incognito",
    "--noerrdialogs",
    "--disable-session-crashed-bubble",
    "--disable-infobars",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-translate",
    "--disable-features=Translate,TranslateUI,OverscrollHistoryNavigation,TouchpadOverscrollHistoryNavigation",
    "--overscroll-history-navigation=0",
    "--disable-pinch",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--password-store=basic",
    "--autoplay-policy=no-user-gesture-required",
    "--check-for-update-interval=31536000",
)


def chromium_argv(chromium: str, url: str, profile: Path) -> list[str]:
    return [chromium, *KIOSK_FLAGS, f"--user-data-dir={profile}", url]


def _runtime_dir() -> str | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return runtime if runtime and os.path.isdir(runtime) else None


def wait_for_app(health_url: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_ok(health_url):
            return True
        time.sleep(0.5)
    return False


def run_browser(url: str, chromium: str, *, stale_s: float = 30.0, grace_s: float = 30.0) -> int:
    health = urljoin(url, "/healthz")
    if not wait_for_app(health):
        log.error("kiosk app at %s does not answer; giving up (the supervisor retries)", health)
        return 2
    notifier = _notifier()
    profile = Path(tempfile.mkdtemp(prefix="kiosk-chromium-", dir=_runtime_dir()))
    proc = subprocess.Popen(chromium_argv(chromium, url, profile), start_new_session=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last_alive = time.monotonic() + grace_s  # the page gets grace_s to load before it is judged
    code = 0
    try:
        if notifier is not None:
            notifier.notify("READY=1")
        while not stopping:
            if proc.poll() is not None:
                log.warning("chromium exited (%s)", proc.returncode)
                code = 1
                break
            now = time.monotonic()
            if page_alive(health, stale_s):
                last_alive = max(last_alive, now)
            elif now - last_alive > stale_s:
                log.warning("the kiosk page sent no heartbeat for %.0f s: restarting chromium", stale_s)
                code = 3
                break
            if notifier is not None:
                notifier.notify("WATCHDOG=1")
            time.sleep(1.0)
    finally:
        _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
    return code


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5.0)
    except ProcessLookupError:
        pass


class _Notify:
    def notify(self, state: str) -> None: ...


def _notifier() -> _Notify | None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    import sdnotify

    notifier: _Notify = sdnotify.SystemdNotifier()
    return notifier
