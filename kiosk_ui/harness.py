"""Run the kiosk app in-process (tests, benchmarks, demos) and drive a pty as its QR scanner."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import Any

from kiosk_ui.agentlink import AgentPort
from kiosk_ui.config import KioskSettings
from kiosk_ui.server import Kiosk, build, start_background, stop_background
from kiosk_ui.supervisor import http_ok


class PtyScanner:
    """A pseudo-terminal: the kiosk opens ``path`` as its serial scanner, tests ``write`` to it."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class ThreadedKiosk:
    """The whole kiosk app (uvicorn in a thread + its background threads), as a context manager."""

    def __init__(self, settings: KioskSettings, client: AgentPort | None = None) -> None:
        import uvicorn

        from kiosk_ui.app import create_app

        self.settings = settings
        self.kiosk: Kiosk = build(settings, client)
        config = uvicorn.Config(
            create_app(self.kiosk.state),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="kiosk-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return self.settings.base_url

    def start(self, timeout: float = 15.0) -> ThreadedKiosk:
        start_background(self.kiosk)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if http_ok(f"{self.url}/healthz", timeout=1.0):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"kiosk app did not start on {self.url}")

    def stop(self) -> None:
        self.kiosk.core.bus.close_all()
        self.server.should_exit = True
        self._thread.join(5.0)
        stop_background(self.kiosk)

    def __enter__(self) -> ThreadedKiosk:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def settings_for_tests(data_dir: Path, port: int, **overrides: Any) -> KioskSettings:
    """Settings for a test run: loopback, short timers unless overridden."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "http_host": "127.0.0.1",
        "http_port": port,
        "telemetry_s": 1.0,
        "content_refresh_s": 1.0,
        "heartbeat_s": 1.0,
    }
    values.update(overrides)
    return KioskSettings(**values)
