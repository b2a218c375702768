"""Run a private mosquitto: for the demo, the tests and the benchmarks.

The broker gets its own directory (config, persistence, log), a free port and, when TLS is
asked for, the certificate files it is given. Started as root, mosquitto drops to the
``mosquitto`` user, so the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    """mosquitto is missing, will not start, or does not answer."""


INSTALL_HINT = (
    "mosquitto (the MQTT broker) is not installed. On Debian, Ubuntu or Raspberry Pi OS run:\n"
    "    sudo apt-get update && sudo apt-get install -y mosquitto mosquitto-clients\n"
    "then try again (or pass --broker mqtt://HOST:PORT to use a broker you already run)."
)


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or BrokerError with the command that installs it."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TlsListener:
    """An mTLS listener: the files are copied into the broker directory."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True
    use_identity_as_username: bool = True
    crlfile: Path | None = None
    # Replace the client id by the username (the certificate CN): one identity cannot take over
    # (disconnect) another's session. Off where several workers share one identity.
    use_username_as_clientid: bool = False


@dataclass
class BrokerConfig:
    port: int = 0
    host: str = "127.0.0.1"
    allow_anonymous: bool = True
    acl_text: str | None = None
    tls: TlsListener | None = None
    plain_listener: bool = True
    max_queued_messages: int = 200_000
    message_size_limit: int = 1024 * 1024
    extra: list[str] = field(default_factory=list)
    # More mTLS listeners (e.g. an internal one for fleet services next to the device one).
    extra_tls: list[TlsListener] = field(default_factory=list)
    # mosquitto's dynamic-security plugin and its configuration (``fleet.dynsec``), written to
    # ``dynsec/dynamic-security.json`` in the broker directory, where the broker may rewrite it.
    dynsec_json: str | None = None
    dynsec_plugin: str | None = None
    # ``user`` option: None drops to the mosquitto user when started as root; "root" keeps root,
    # so that files read after the drop (TLS certs, CRL and ACL on reload) stay readable even when
    # another pytest session resets /tmp/pytest-of-root to 0700 meanwhile.
    run_as: str | None = None


def _hand_to_mosquitto_user(path: Path) -> None:
    """Let the unprivileged mosquitto user read and write ``path`` when we run as root."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    # Every folder above must be traversable (x) for that user, as pytest's 0700 temp dirs are not.
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


class MosquittoBroker:
    """A mosquitto process in ``workdir``; restartable with its persistence intact."""

    def __init__(self, workdir: Path, config: BrokerConfig | None = None) -> None:
        self.workdir = Path(workdir)
        self.config = config or BrokerConfig()
        self._chosen: list[TlsListener] = [lst for lst in self._tls_listeners() if lst.port == 0]
        self._choose_plain = self.config.port == 0
        self._choose_ports()
        self._started = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = find_mosquitto()

    def _choose_ports(self) -> None:
        """Free ports for the listeners given port 0."""
        if self._choose_plain:
            self.config.port = free_port(self.config.host)
        for listener in self._chosen:
            listener.port = free_port(self.config.host)

    def _tls_listeners(self) -> list[TlsListener]:
        first = [self.config.tls] if self.config.tls is not None else []
        return first + list(self.config.extra_tls)

    @property
    def url(self) -> str:
        return f"mqtt://{self.config.host}:{self.config.port}"

    @property
    def tls_url(self) -> str:
        if self.config.tls is None:
            raise BrokerError("this broker has no TLS listener")
        return f"mqtts://{self.config.host}:{self.config.tls.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'true' if cfg.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir / 'data'}/",
            "autosave_interval 1",
            f"max_queued_messages {cfg.max_queued_messages}",
            "max_inflight_messages 100",
            f"message_size_limit {cfg.message_size_limit}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if cfg.run_as is not None:
            lines.append(f"user {cfg.run_as}")
        if cfg.acl_text is not None:
            acl = self.workdir / "acl"
            acl.write_text(cfg.acl_text)
            lines.append(f"acl_file {acl}")
        if cfg.dynsec_json is not None:
            if cfg.dynsec_plugin is None:
                raise BrokerError("dynsec_json needs dynsec_plugin (path of mosquitto_dynamic_security.so)")
            (self.workdir / "dynsec").mkdir(exist_ok=True)
            dynsec = self.workdir / "dynsec" / "dynamic-security.json"
            dynsec.write_text(cfg.dynsec_json)
            lines += [f"plugin {cfg.dynsec_plugin}", f"plugin_opt_config_file {dynsec}"]
        if cfg.plain_listener:
            lines.append(f"listener {cfg.port} {cfg.host}")
        for index, tls in enumerate(self._tls_listeners()):
            tls_dir = self.workdir / ("tls" if index == 0 else f"tls{index}")
            tls_dir.mkdir(exist_ok=True)
            names = {"cafile": tls.cafile, "certfile": tls.certfile, "keyfile": tls.keyfile}
            if tls.crlfile is not None:
                names["crlfile"] = tls.crlfile
            lines.append(f"listener {tls.port} {cfg.host}")
            for key, src in names.items():
                dst = tls_dir / f"{key}.pem"
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o600)
                lines.append(f"{key} {dst}")
            lines.append(f"require_certificate {'true' if tls.require_certificate else 'false'}")
            lines.append(f"use_identity_as_username {'true' if tls.use_identity_as_username else 'false'}")
            if tls.use_username_as_clientid:
                lines.append("use_username_as_clientid true")
            lines.append("tls_version tlsv1.2")
        lines.extend(cfg.extra)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        _hand_to_mosquitto_user(self.workdir)
        return conf

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        for attempt in range(5):
            conf = self._write_config()
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                self._wait_listening(timeout)
            except BrokerError as exc:
                # a port chosen free was taken by another program before mosquitto bound it: on a
                # first start (nobody knows the port yet) choose again; a restart keeps its port
                raced = "Address already in use" in str(exc) and (self._choose_plain or self._chosen)
                if self._started or not raced or attempt == 4:
                    raise
                self.stop()
                self._choose_ports()
                continue
            break
        self._started = True
        return self

    def _wait_listening(self, timeout: float) -> None:
        ports = [self.config.port] if self.config.plain_listener else []
        ports += [listener.port for listener in self._tls_listeners()]
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited at start (code {self.proc.returncode}): {err}{log}")
            try:
                with socket.create_connection((self.config.host, pending[0]), timeout=0.2):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not listen on {self.config.host}:{pending[0]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): persistence is written, sessions survive a restart."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self, timeout: float = 10.0) -> None:
        """Rewrite the config (ACL, CRL and certificate copies) and send SIGHUP.

        mosquitto 2.0 re-reads the ACL, the CRL and the server certificate on SIGHUP; clients
        stay connected. Returns once the broker has logged the reload.
        """
        if self.proc is None or self.proc.poll() is not None:
            raise BrokerError("mosquitto is not running; start it instead of reloading")
        before = self._log_count("Reloading config")
        self._write_config()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._log_count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise BrokerError("mosquitto did not log a config reload after SIGHUP")
            time.sleep(0.02)
        time.sleep(0.05)  # the reload finishes within the same loop iteration as the log line

    def _log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except FileNotFoundError:
            return 0

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_broker(workdir: Path, config: BrokerConfig | None = None) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(workdir, config)
    try:
        yield broker.start()
    finally:
        broker.stop()
