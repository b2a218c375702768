"""Kiosk test fixtures: the app in-process, a pty as its scanner, Chromium via Playwright, a real
agent (with the repo's mosquitto fixture) and a small paho responder standing in for the city."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kiosk_helpers import ARTIFACTS, DOSSIER, GOOD_CODE, PORTRAIT

from fleet.broker import MosquittoBroker, free_port
from kiosk_ui.harness import PtyScanner, ThreadedKiosk, settings_for_tests

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEVICE_ID = "kiosk-test-0001"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: sudo apt-get install -y chromium fonts-noto-core")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class PageRecorder:
    """Every request the page made, to check that none leaves the kiosk's own server."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []

    def outside(self, base: str) -> list[str]:
        return [u for u in self.urls if not u.startswith(base + "/")]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., tuple[Any, PageRecorder]]]:
    contexts: list[Any] = []

    def opener(url: str, viewport: dict[str, int] | None = None) -> tuple[Any, PageRecorder]:
        context = browser.new_context(viewport=viewport or PORTRAIT, reduced_motion="reduce", locale="vi-VN")
        contexts.append(context)
        page = context.new_page()
        recorder = PageRecorder()
        page.on("request", lambda request: recorder.urls.append(request.url))
        page.on("pageerror", lambda error: recorder.errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("html[data-ready=yes]")
        return page, recorder

    yield opener
    for context in contexts:
        context.close()


@pytest.fixture
def pty_scanner() -> Iterator[PtyScanner]:
    scanner = PtyScanner()
    yield scanner
    scanner.close()


@pytest.fixture
def kiosk_factory(tmp_path: Path) -> Iterator[Callable[..., ThreadedKiosk]]:
    started: list[ThreadedKiosk] = []

    def factory(data_dir: Path | None = None, **overrides: Any) -> ThreadedKiosk:
        directory = data_dir or tmp_path / "agent-data"
        directory.mkdir(parents=True, exist_ok=True)
        kiosk = ThreadedKiosk(settings_for_tests(directory, free_port(), **overrides)).start()
        started.append(kiosk)
        return kiosk

    yield factory
    for kiosk in started:
        kiosk.stop()


@pytest.fixture
def agent_data(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Path]:
    """A real agent (``cityedge agent run``, role kiosk) on the test broker; yields its data dir."""
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    config = tmp_path / "agent.toml"
    # The test plays an unsigned fleet (desired state); content itself is still signed and verified.
    config.write_text("[telemetry]\ninterval_s = 1.0\n[commands]\nrequire_signature = false\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "-c",
            str(config),
            "--device-id",
            DEVICE_ID,
            "--role",
            "kiosk",
            "--broker",
            broker.url,
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from agent.localapi import LocalApiClient

        client = LocalApiClient(data_dir, timeout=2.0)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.status()["link"]["subscribed"]:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the agent did not start")
            time.sleep(0.1)
        yield data_dir
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Responder:
    """Answers ``rpc/req`` like the city's gateway: from a table, or silently (upstream down)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.answers: dict[str, dict[str, Any]] = {}
        self.silent = False
        self.requests: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.telemetry: list[dict[str, Any]] = []
        self.reported: dict[str, Any] = {}
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"responder-{os.getpid()}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda *args: self._on_connect()
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_message = lambda client, userdata, message: self._on_message(message)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 600  # events published while we were away are kept for us
        self.client.connect(broker.config.host, broker.config.port, clean_start=False, properties=session)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("responder could not connect")

    def _on_connect(self) -> None:
        self.client.subscribe("city/v1/devices/+/rpc/req", qos=1)
        self.client.subscribe("city/v1/devices/+/events/+", qos=1)
        self.client.subscribe("city/v1/devices/+/telemetry", qos=0)
        self.client.subscribe("city/v1/devices/+/shadow/reported", qos=1)
        self._connected.set()

    def _on_message(self, message: Any) -> None:
        payload = json.loads(message.payload)
        if "/events/" in message.topic:
            self.events.append((message.topic.rsplit("/", 1)[1], payload))
            return
        if message.topic.endswith("/telemetry"):
            self.telemetry.append(payload)
            return
        if message.topic.endswith("/shadow/reported"):
            self.reported = payload
            return
        self.requests.append(payload)
        if self.silent:
            return
        code = payload.get("params", {}).get("code")
        answer: dict[str, Any] = {"id": payload["id"]}
        if code in self.answers:
            answer.update(ok=True, result=self.answers[code])
        else:
            answer.update(
                ok=False, code="not_found", error="no dossier with this code / không tìm thấy hồ sơ"
            )
        self.client.publish(message.topic.replace("rpc/req", "rpc/res"), json.dumps(answer), qos=1)

    def publish_desired(self, device: str, desired: dict[str, Any]) -> None:
        topic = f"city/v1/devices/{device}/shadow/desired"
        self.client.publish(
            topic, json.dumps(desired, ensure_ascii=False), qos=1, retain=True
        ).wait_for_publish(5)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def responder(broker: MosquittoBroker) -> Iterator[Responder]:
    r = Responder(broker)
    r.answers[GOOD_CODE] = DOSSIER
    yield r
    r.stop()


@pytest.fixture
def fleet_gateway(broker: MosquittoBroker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cityedge fleet serve`` with the gateway's dossier service over its demo registry, plus a
    stand-in for the bank's payment feed (``kiosk_fleet_rpc``)."""
    here = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cityedge.cli import main; main()",
            "fleet",
            "serve",
            "--broker",
            broker.url,
            "--db",
            f"sqlite:///{tmp_path / 'fleet.db'}",
            "--http",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "fleet"),
            "--rpc",
            "dossier=kiosk_fleet_rpc:make_dossier_service_with_bank",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
