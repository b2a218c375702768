"""One device contract, three implementations: a small adapter per implementation and a signing city.

Each adapter starts one device on a broker and knows what only it can do (make it send events, make
it ask the city something, crash it). Everything the tests look at is what the device publishes,
read by ``City`` (a ``Probe`` of tests/agent) exactly as the fleet reads it; every command and desired
state is signed with a fleet key, as the fleet sends them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from agent_helpers import AgentProc, Probe, fast_config
from fleet_helpers import FakeDevice
from sim_helpers import SimThread

from agent.truststore import TrustStore
from fleet.broker import MosquittoBroker
from fleet.desired import desired_body
from fleet.keys_cli import init_keys
from fleet.signer import KEY_LIST, ROOT_PUBLIC, Ed25519Signer, keys_dir
from hil.sim.config import SimConfig
from protocol.timefmt import format_ts, utc_now
from protocol.trust import RootKey

IMPLS = ("agent", "sim", "fake")
"""The real agent (a process), the simulator (hil/sim, on its own loop), the fleet tests' FakeDevice."""

BASE_INTERVAL_S = 1.5
"""Telemetry period every device under test starts with."""


def fleet_keys(fleet_dir: Path) -> Path:
    """A fleet key ring in ``fleet_dir`` as ``cityedge fleet keys init`` makes it; returns its keys
    directory (what devices are enrolled with)."""
    init_keys(fleet_dir, fleet_dir / "root.pem")
    return keys_dir(fleet_dir)


def enrol_agent(data_dir: Path, fleet_dir: Path) -> None:
    """What enrolment leaves in an agent's data directory: the fleet root and its signed key list."""
    folder = keys_dir(fleet_dir)
    root = RootKey.from_dict(json.loads((folder / ROOT_PUBLIC).read_text()))
    TrustStore.install(data_dir / "trust", root, json.loads((folder / KEY_LIST).read_text()), utc_now())


class City(Probe):
    """The city's side of one device: records its subtree, sends signed commands and desired states."""

    def __init__(self, broker: MosquittoBroker, device_id: str, signer: Ed25519Signer, name: str = "city"):
        self.qos: list[tuple[str, int]] = []  # (topic, QoS as delivered: at most what was published)
        super().__init__(broker, device_id, name=name)
        self.signer = signer

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.qos.append((msg.topic, msg.qos))
        super()._on_message(client, userdata, msg)

    def qos_of(self, family: str) -> set[int]:
        """The QoS levels messages on ``family`` (e.g. "status", "events/") arrived with."""
        with self._cond:
            return {q for t, q in self.qos if t.startswith(f"{self.root}/{family}")}

    def signed_command(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        cid: str,
        expires_in: float = 120,
        signer: Ed25519Signer | None = None,
    ) -> bytes:
        """A command as ``fleet.commands.CommandService`` publishes it, signed by the fleet key (or
        by ``signer``)."""
        now = utc_now()
        issued = now - timedelta(seconds=1) if expires_in > 0 else now + timedelta(seconds=expires_in - 60)
        body = {
            "id": cid,
            "name": name,
            "args": args or {},
            "issued_at": format_ts(issued),
            "expires_at": format_ts(now + timedelta(seconds=expires_in)),
            "nonce": f"n-{cid}",
        }
        return json.dumps((signer or self.signer).sign(body), separators=(",", ":")).encode()

    def command(
        self, name: str, args: dict[str, Any] | None = None, *, cid: str, expires_in: float = 120
    ) -> str:
        self.publish("commands/req", self.signed_command(name, args, cid=cid, expires_in=expires_in))
        return cid

    def ask(self, name: str, args: dict[str, Any] | None = None, *, cid: str, expires_in: float = 120) -> Any:
        """Send a command and return the device's answer."""
        return self.answer(self.command(name, args, cid=cid, expires_in=expires_in))

    def desire(self, version: int, config: dict[str, Any]) -> None:
        """Publish a signed desired state, retained, as ``fleet.desired.DesiredService`` does."""
        body = self.signer.sign(desired_body(self.device_id, version, config, None))
        self.publish("shadow/desired", json.dumps(body, separators=(",", ":")), retain=True)


class Device(Protocol):
    """One device under test."""

    impl: str
    device_id: str
    role: str
    autonomous: bool
    """Keeps its own state (shadow, desired, telemetry period); False for a scripted device."""

    def produce_events(self, count: int) -> None:
        """Make the device send (at least) ``count`` events."""

    def rpc(self, service: str, method: str, params: dict[str, Any]) -> Any:
        """Make the device ask the city (rpc/req) and return the city's result."""

    def crash(self) -> None:
        """End the device as a power cut would: no goodbye, the broker sends its last will."""

    def close(self) -> None: ...


class AgentDevice:
    """``python -m agent run``, enrolled with the fleet's keys: it runs only signed commands."""

    impl, role, autonomous = "agent", "kiosk", True

    def __init__(self, broker: MosquittoBroker, workdir: Path, device_id: str, fleet_dir: Path) -> None:
        self.device_id = device_id
        data_dir = workdir / "data"
        enrol_agent(data_dir, fleet_dir)
        config = fast_config(
            device_id,
            broker.url,
            data_dir,
            commands={"require_signature": True},
            telemetry={"interval_s": BASE_INTERVAL_S},
        )
        self.proc = AgentProc(workdir, config).start()
        status = self.proc.wait_connected()
        assert status["verifier"] == "SignedCommandVerifier", status

    def produce_events(self, count: int) -> None:
        for n in range(count):
            self.proc.client.emit("test.contract", {"n": n})

    def rpc(self, service: str, method: str, params: dict[str, Any]) -> Any:
        return self.proc.client.rpc(service, method, params, timeout=20)

    def crash(self) -> None:
        self.proc.kill9()

    def close(self) -> None:
        self.proc.kill9()


class SimDevice:
    """One simulated camera on its own loop in a thread (``hil.sim``), given the fleet's keys."""

    impl, role, autonomous = "sim", "camera", True

    def __init__(self, broker: MosquittoBroker, id_prefix: str, fleet_dir: Path) -> None:
        # time_scale 120: a traffic-count window (60 scenario seconds) closes every half second
        cfg = SimConfig(
            broker=broker.url,
            devices=1,
            cameras=1,
            id_prefix=id_prefix,
            telemetry_interval_s=BASE_INTERVAL_S,
            time_scale=120,
            reconnect_min_s=0.2,
            reconnect_max_s=2.0,
            trust=str(keys_dir(fleet_dir)),
        )
        self.device_id = f"cam-{id_prefix}-0001"
        self.sim = SimThread(cfg).start()
        self.sim.wait_connected()

    def produce_events(self, count: int) -> None:
        """Its scenario sends events by itself (traffic counts)."""

    def rpc(self, service: str, method: str, params: dict[str, Any]) -> Any:
        raise AssertionError("simulated devices make no RPC requests")

    def crash(self) -> None:
        raise AssertionError("use SimProcess to crash a simulated device")

    def close(self) -> None:
        self.sim.stop()


class SimProcess:
    """``cityedge sim`` with one camera as a child process: killed, its connection just ends."""

    impl, role, autonomous = "sim", "camera", True

    def __init__(self, broker: MosquittoBroker, id_prefix: str, fleet_dir: Path) -> None:
        self.device_id = f"cam-{id_prefix}-0001"
        cli = str(Path(sys.executable).with_name("cityedge"))
        argv = [cli, "sim", "--broker", broker.url, "-n", "1", "--cameras", "1", "--id-prefix", id_prefix]
        argv += ["--trust", str(keys_dir(fleet_dir)), "-q"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def produce_events(self, count: int) -> None:
        """Its scenario sends events by itself."""

    def rpc(self, service: str, method: str, params: dict[str, Any]) -> Any:
        raise AssertionError("simulated devices make no RPC requests")

    def crash(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class FakeDeviceUnderTest:
    """The fleet tests' scripted ``FakeDevice``; this adapter is its script (telemetry every period)."""

    impl, role, autonomous = "fake", "camera", False

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.device_id = device_id
        self.device = FakeDevice(broker, device_id, role=self.role).connect()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name=f"telemetry-{device_id}", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(BASE_INTERVAL_S):
            self.device.telemetry()

    def produce_events(self, count: int) -> None:
        for n in range(count):
            self.device.event("test.contract", n=n)

    def rpc(self, service: str, method: str, params: dict[str, Any]) -> Any:
        answer = self.device.rpc(service, method, params, timeout=20)
        return answer.get("result")

    def crash(self) -> None:
        self._stop.set()
        self._ticker.join(5)
        self.device.crash()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(5)
        self.device.close()


def start_device(impl: str, broker: MosquittoBroker, workdir: Path, name: str, fleet_dir: Path) -> Device:
    """A connected device of ``impl`` whose id contains ``name`` (a-z0-9), enrolled in the fleet of
    ``fleet_dir`` where it checks signatures (not the FakeDevice: an unsigned development device)."""
    if impl == "agent":
        return AgentDevice(broker, workdir, f"kiosk-{name}-0001", fleet_dir)
    if impl == "sim":
        return SimDevice(broker, name, fleet_dir)
    if impl == "fake":
        return FakeDeviceUnderTest(broker, f"cam-{name}-0001")
    raise AssertionError(f"no adapter for {impl!r}")


def start_crashable(impl: str, broker: MosquittoBroker, workdir: Path, name: str, fleet_dir: Path) -> Device:
    """As ``start_device``, but one whose ``crash`` ends it abruptly (a process for the simulator)."""
    if impl == "sim":
        return SimProcess(broker, name, fleet_dir)
    return start_device(impl, broker, workdir, name, fleet_dir)
