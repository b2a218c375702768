"""Build the kiosk app from its settings and serve it (``cityedge kiosk serve``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from agent.kiosk.metrics import KioskMetrics, MetricsReporter
from kiosk_ui.agentlink import UPDATE_LOCK_TTL_S, AgentLink, AgentPort, local_api_client
from kiosk_ui.app import AppState, create_app
from kiosk_ui.bus import EventBus
from kiosk_ui.config import KioskSettings
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.core import KioskCore
from kiosk_ui.devices import Devices, build_doccam, build_printer, build_scanner
from kiosk_ui.fonts import FontCache, find_fonts
from kiosk_ui.render import Renderer
from kiosk_ui.speech import GuideVoice, build_speech

log = logging.getLogger(__name__)


@dataclass
class Kiosk:
    """Everything one running kiosk app is made of (built by ``build``, run by ``serve``)."""

    settings: KioskSettings
    core: KioskCore
    state: AppState
    reporter: MetricsReporter
    housekeeping: Housekeeping


class Housekeeping:
    """One background thread: expire sessions, refresh pushed content, report metrics, feed the watchdog."""

    def __init__(self, settings: KioskSettings, core: KioskCore, reporter: MetricsReporter) -> None:
        self.settings = settings
        self.core = core
        self.reporter = reporter
        self.loop_beat = 0.0
        self._lock_held = False
        self._lock_renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notifier = _systemd_notifier()

    def beat_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule a once-a-second callback on the server loop: proof that it still runs."""

        def beat() -> None:
            self.loop_beat = time.monotonic()
            loop.call_later(1.0, beat)

        loop.call_soon(beat)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kiosk-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def refresh_content(self) -> None:
        config = self.core.link.desired_config()
        if config is not None:
            changed = self.core.feed.apply_desired(config)
            if changed:
                log.info("content updated: %s", ", ".join(changed))

    def report(self) -> None:
        self.core.devices.poll_printer()
        self.core.metrics.set_extra(
            content=self.core.feed.status(),
            scanner_counts=self.core.devices.scanner_stats(),
            queued_events=self.core.link.queued,
        )
        self.reporter.report_now()

    def update_lock(self, now: float) -> None:
        """Hold the agent's update lock while a resident's session is open (renewed as a lease)."""
        active = self.core.store.any_active()
        renew_due = active and now - self._lock_renewed > UPDATE_LOCK_TTL_S / 3
        if active != self._lock_held or renew_due:
            self.core.link.hold_update_lock(active)
            self._lock_held, self._lock_renewed = active, now

    def _run(self) -> None:
        next_content = next_report = 0.0
        ready_sent = False
        while not self._stop.wait(1.0):
            now = time.monotonic()
            self.core.store.sweep(now)
            self.update_lock(now)
            if now >= next_content:
                next_content = now + self.settings.content_refresh_s
                self.refresh_content()
            if now >= next_report:
                next_report = now + self.settings.telemetry_s
                self.report()
            if self._notifier is not None and now - self.loop_beat < 5.0:
                if not ready_sent:
                    self._notifier.notify("READY=1")
                    ready_sent = True
                self._notifier.notify("WATCHDOG=1")


class _Notifier:
    def notify(self, state: str) -> None: ...


def _systemd_notifier() -> _Notifier | None:
    import os

    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    import sdnotify

    notifier: _Notifier = sdnotify.SystemdNotifier()
    return notifier


def build(settings: KioskSettings, client: AgentPort | None = None) -> Kiosk:
    metrics = KioskMetrics()
    link = AgentLink(
        client or local_api_client(settings.data_dir), lookup_timeout_s=settings.lookup_timeout_s
    )
    devices = Devices(build_scanner(settings), build_printer(settings), metrics, build_doccam(settings))
    core = KioskCore(
        feed=ContentFeed(settings.data_dir, settings.content_keys),
        link=link,
        devices=devices,
        metrics=metrics,
        renderer=Renderer({"vi": settings.site_name_vi, "en": settings.site_name_en}),
        bus=EventBus(),
        session_ttl_s=settings.session_ttl_s,
        voice=GuideVoice(build_speech()),
    )
    reporter = MetricsReporter(metrics, link.report, settings.telemetry_s)
    housekeeping = Housekeeping(settings, core, reporter)
    state = AppState(settings=settings, core=core, fonts=FontCache(find_fonts()))
    state.on_startup.append(housekeeping.beat_from)
    return Kiosk(settings, core, state, reporter, housekeeping)


def start_background(kiosk: Kiosk) -> None:
    kiosk.state.fonts.warm()
    kiosk.core.link.start()
    kiosk.core.devices.start(kiosk.core.on_scan, kiosk.core.on_garbage)
    kiosk.housekeeping.start()


def stop_background(kiosk: Kiosk) -> None:
    kiosk.housekeeping.stop()
    kiosk.core.devices.stop()
    kiosk.core.shutdown()
    kiosk.core.link.stop()


def make_server(config: Any, on_exit: Callable[[], None]) -> Any:
    """A uvicorn server that ends the page's event streams as soon as a stop is asked, so
    shutdown does not wait for the graceful timeout."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(settings: KioskSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    import uvicorn

    kiosk = build(settings)
    app = create_app(kiosk.state)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="on",
    )
    server = make_server(config, on_exit=kiosk.core.bus.close_all)
    start_background(kiosk)
    try:
        server.run()
    finally:
        stop_background(kiosk)
