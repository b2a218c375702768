"""Agent configuration: an optional TOML file, persisted local overrides and command-line flags.

Layers are merged in that order (later wins). Every section refuses unknown keys
(``extra="forbid"``) and every field carries a description, so ``cityedge agent run --help`` and the
error messages can say what a setting means. A bad value raises ``ConfigError`` naming the source
(file or flag), the field and the problem.
"""

from __future__ import annotations

import copy
import importlib
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from protocol.models import DEFAULT_MAX_PAYLOAD
from protocol.topics import DEFAULT_PREFIX, DEVICE_ID_RE

EVIDENCE_KINDS_ALWAYS = ("traffic.violation",)
"""Event kinds that are evidence whatever the configuration says: never evicted, always signed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSection(Section):
    id: str | None = Field(
        default=None,
        description="Device id (also the MQTT client id and certificate CN), e.g. kiosk-hn-btl-0001.",
    )
    role: Literal["kiosk", "camera", "generic"] = Field(
        default="generic", description="What this device does."
    )
    site: str | None = Field(default=None, description="Site code where the device is installed (free text).")
    key_path: Path | None = Field(
        default=None,
        description="Ed25519 device key (PEM) used to sign evidence; default DATA_DIR/device_key.pem.",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not DEVICE_ID_RE.match(value):
            raise ValueError("use 3-63 lowercase letters, digits and '-', e.g. kiosk-hn-btl-0001")
        return value


class TlsSection(Section):
    ca: Path | None = Field(default=None, description="CA bundle that signed the broker certificate (PEM).")
    cert: Path | None = Field(
        default=None, description="This device's client certificate (PEM) for mutual TLS."
    )
    key: Path | None = Field(default=None, description="Private key of the client certificate (PEM).")

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be given together")
        return self


class MqttSection(Section):
    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).",
    )
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="Topic prefix of the contract (city/v1).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps this device's session while offline.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="TCP/TLS connect timeout, seconds."
    )
    backoff_min_s: float = Field(default=1.0, gt=0, description="First reconnect delay ceiling, seconds.")
    backoff_max_s: float = Field(
        default=60.0, gt=0, description="Largest reconnect delay, seconds (full jitter)."
    )
    inflight_window: int = Field(
        default=100, ge=1, le=65000, description="Outbox events awaiting PUBACK at once."
    )
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD,
        ge=1024,
        description="Largest incoming message accepted; bigger ones dropped.",
    )
    tls: TlsSection = Field(default_factory=TlsSection, description="TLS files for mqtts:// brokers.")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _backoff(self) -> MqttSection:
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s must be at least backoff_min_s")
        return self

    @property
    def host(self) -> str:
        return parse_broker_url(self.broker)[1]

    @property
    def port(self) -> int:
        return parse_broker_url(self.broker)[2]

    @property
    def use_tls(self) -> bool:
        return parse_broker_url(self.broker)[0] == "mqtts"


class TelemetrySection(Section):
    interval_s: float = Field(
        default=30.0, ge=0.1, le=86400, description="Seconds between telemetry messages."
    )
    qos: Literal[0, 1] = Field(default=0, description="MQTT QoS of telemetry (0 or 1).")


class OutboxSection(Section):
    max_events: int = Field(
        default=100_000, ge=10, description="Most events kept while the city is unreachable."
    )
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, description="Most payload bytes kept.")
    max_event_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD, ge=1024, description="Largest single event envelope accepted."
    )
    fsync: Literal["full", "normal", "off"] = Field(
        default="full",
        description="SQLite synchronous mode (WAL): full = durable across power loss (default); "
        "normal = durable across crashes only; off = testing only.",
    )
    telemetry_kinds: list[str] = Field(
        default_factory=lambda: ["*.heartbeat", "metrics.*"],
        description="Kind patterns (fnmatch) of telemetry-class events: evicted first when full.",
    )
    evidence_kinds: list[str] = Field(
        default_factory=lambda: list(EVIDENCE_KINDS_ALWAYS),
        description="Kind patterns of evidence: never evicted, always signed (traffic.violation always).",
    )
    batch_max: int = Field(
        default=1000, ge=1, le=100_000, description="Most events committed in one transaction."
    )


class CommandsSection(Section):
    require_signature: bool = Field(
        default=True,
        description=(
            "Reject commands and desired state unless a fleet signature verifies (secure default; "
            "false only for development against an unsigned fleet)."
        ),
    )
    result_retention: int = Field(
        default=1000, ge=10, description="Command answers kept for re-delivered ids."
    )
    max_log_lines: int = Field(default=1000, ge=1, description="Most log lines get_logs returns.")
    plugins: list[str] = Field(
        default_factory=list,
        description="'module:function' entries called at start with register_handler(name, fn), "
        "so a role (camera snapshot, OTA update) can add commands.",
    )


class LocalApiSection(Section):
    enabled: bool = Field(default=True, description="Serve the local API on DATA_DIR/agent.sock.")
    socket_mode: int = Field(
        default=0o660, ge=0, le=0o777, description="File mode of the socket (e.g. 0o660)."
    )
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest request line accepted.")
    rpc_timeout_max_s: float = Field(
        default=60.0, gt=0, description="Longest rpc timeout a caller may ask for."
    )


class LoggingSection(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    file: bool = Field(default=True, description="Also log to DATA_DIR/logs/agent.log (rotated).")
    file_max_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="Size at which the log file rotates."
    )
    file_backups: int = Field(default=3, ge=0, le=50, description="Rotated log files kept.")


class SystemSection(Section):
    backend: Literal["simulated", "linux"] = Field(
        default="simulated", description="simulated records reboots; linux runs systemctl reboot."
    )
    restart_mode: Literal["auto", "exit", "exec"] = Field(
        default="auto",
        description="How the restart command restarts the agent: exit (code 75, for systemd), "
        "exec (re-exec in place) or auto (exit under systemd, exec otherwise).",
    )


class OtaSection(Section):
    enabled: bool = Field(
        default=False,
        description="Follow the release named in the signed desired state (needs repository_url and "
        "the launcher-managed slot root).",
    )
    repository_url: str | None = Field(
        default=None,
        description="Base URL of the fleet's TUF repository, e.g. https://fleet.city:8443/tuf/ "
        "(metadata/ and targets/ below it).",
    )
    root: Path = Field(
        default=Path("/opt/cityedge"),
        description="Slot root managed by the launcher: slots/a, slots/b, current -> slots/X, boot.json.",
    )
    trusted_root: Path | None = Field(
        default=None,
        description="The TUF root.json installed at provisioning (default ROOT/trust/root.json).",
    )
    health_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="Time a new release has to prove itself healthy."
    )
    max_tries: int = Field(
        default=3, ge=1, le=10, description="Starts of a new release before the launcher rolls back."
    )
    check_interval_s: float = Field(
        default=3600.0, ge=1, description="Seconds between checks of the repository for new metadata."
    )
    download_retries: int = Field(
        default=8, ge=0, le=100, description="Retries of a failed download (resumed with HTTP Range)."
    )
    download_timeout_s: float = Field(default=30.0, gt=0, description="Network timeout of one request.")
    rate_limit_bps: int | None = Field(
        default=None, ge=1024, description="Cap on download speed, bytes per second (metered links)."
    )
    daily_byte_budget: int | None = Field(
        default=None,
        ge=0,
        description="Most bytes downloaded per local day (metered/cellular links); more waits a day.",
    )
    windows: list[str] = Field(
        default_factory=list,
        description="Local-time install windows, e.g. ['01:00-05:00']; empty = any time.",
    )
    timezone: str = Field(default="Asia/Ho_Chi_Minh", description="Time zone of the install windows.")
    lock_max_s: float = Field(
        default=1800.0, gt=0, description="Longest an app's update lock holds before it expires."
    )
    state_scripts: Path | None = Field(
        default=None,
        description="Directory of state scripts run when the updater enters a phase "
        "(<phase>_enter*, as in Mender); they must be idempotent.",
    )
    free_space_margin_bytes: int = Field(
        default=16 * 1024 * 1024, ge=0, description="Free space kept beyond what an install needs."
    )

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, value: list[str]) -> list[str]:
        for window in value:
            parse_window(window)
        return value

    @field_validator("repository_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value


def parse_window(text: str) -> tuple[int, int]:
    """``HH:MM-HH:MM`` local time -> (start, end) in minutes since midnight (end may be < start)."""
    try:
        start, end = text.split("-")
        minutes = []
        for part in (start, end):
            hours, mins = part.strip().split(":")
            value = int(hours) * 60 + int(mins)
            if not (0 <= int(hours) <= 24 and 0 <= int(mins) < 60 and value <= 24 * 60):
                raise ValueError
            minutes.append(value)
    except ValueError:
        raise ValueError(f"install window {text!r} must look like 01:00-05:00") from None
    return minutes[0], minutes[1]


class RenewalSection(Section):
    enabled: bool = Field(
        default=True,
        description="Renew the device certificate before it expires (enrolled devices; agent/renewal.py).",
    )
    at_fraction: float = Field(
        default=2 / 3,
        gt=0,
        lt=1,
        description="Renew once this share of the certificate's lifetime has passed.",
    )
    check_interval_s: float = Field(
        default=3600.0, ge=0.1, le=86400, description="Longest time between two checks of the certificate."
    )
    retry_min_s: float = Field(
        default=60.0, gt=0, description="First wait after a failed renewal (doubling, with jitter)."
    )
    retry_max_s: float = Field(default=6 * 3600.0, gt=0, description="Longest wait between renewal attempts.")

    @model_validator(mode="after")
    def _retry(self) -> RenewalSection:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be at least retry_min_s")
        return self


class IobusSection(Section):
    port: str | None = Field(
        default=None,
        description=(
            "Serial port of the cabinet I/O board (e.g. /dev/serial0, /dev/serial/by-id/..., a pty "
            "path of the software-in-the-loop board) or 'simulated'; none: no board."
        ),
    )
    baudrate: int = Field(default=115200, gt=0, description="UART speed of the I/O board.")
    usb_port: str | None = Field(
        default=None,
        description=(
            "The board's USB serial port (its MicroPython REPL, e.g. /dev/serial/by-id/usb-MicroPython_...), "
            "through which the agent flashes the firmware a release carries; none: releases cannot update "
            "the board's firmware on this device."
        ),
    )
    firmware_timeout_s: float = Field(
        default=120.0,
        ge=5,
        le=1800,
        description="Seconds the board has, after flashing, to answer running the new firmware.",
    )
    heartbeat_s: float = Field(
        default=5.0, ge=0.05, le=600, description="Seconds between heartbeats to the board's watchdog."
    )
    watchdog_timeout_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Heartbeat silence after which the board power-cycles this computer.",
    )
    watchdog_off_ms: int = Field(
        default=5000, ge=50, le=60000, description="How long the board keeps the power off."
    )
    status_s: float = Field(
        default=30.0, ge=0.1, le=3600, description="Seconds between sensor readings sent as telemetry."
    )
    fan_on_c: float = Field(default=45.0, description="Cabinet temperature that turns the fan on.")
    fan_off_c: float = Field(default=40.0, description="Cabinet temperature that turns the fan off.")
    overheat_c: float = Field(default=60.0, description="Cabinet temperature raising cabinet.overheat.")
    on_battery_v: float = Field(default=11.5, description="Supply voltage below which the UPS is on battery.")
    low_battery_v: float = Field(default=11.0, description="Battery voltage raising power.low_battery.")

    @model_validator(mode="after")
    def _fan(self) -> IobusSection:
        if self.fan_off_c >= self.fan_on_c:
            raise ValueError("fan_off_c must be below fan_on_c (the fan would flap)")
        if self.low_battery_v > self.on_battery_v:
            raise ValueError("low_battery_v must not be above on_battery_v")
        return self

    def board_config(self) -> dict[str, Any]:
        """The thresholds as the board's ``config`` operation takes them (docs/iobus.md)."""
        return {
            "wd_timeout_s": self.watchdog_timeout_s,
            "wd_off_ms": self.watchdog_off_ms,
            "fan_on_c": self.fan_on_c,
            "fan_off_c": self.fan_off_c,
            "overheat_c": self.overheat_c,
            "on_battery_v": self.on_battery_v,
            "low_battery_v": self.low_battery_v,
        }


class AgentConfig(Section):
    data_dir: Path = Field(
        default=Path("/var/lib/cityedge/agent"), description="Outbox, state, socket and logs."
    )
    device: DeviceSection = Field(default_factory=DeviceSection, description="Who this device is.")
    mqtt: MqttSection = Field(default_factory=MqttSection, description="Link to the city broker.")
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection, description="Health telemetry.")
    outbox: OutboxSection = Field(default_factory=OutboxSection, description="Store-and-forward of events.")
    commands: CommandsSection = Field(default_factory=CommandsSection, description="City commands.")
    local_api: LocalApiSection = Field(default_factory=LocalApiSection, description="Unix socket API.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Logging.")
    system: SystemSection = Field(default_factory=SystemSection, description="Reboot/restart backend.")
    ota: OtaSection = Field(default_factory=OtaSection, description="Over-the-air updates.")
    renewal: RenewalSection = Field(
        default_factory=RenewalSection, description="Automatic renewal of the device certificate."
    )
    iobus: IobusSection = Field(
        default_factory=IobusSection, description="Cabinet I/O board (watchdog, tamper, sensors)."
    )

    @property
    def device_id(self) -> str:
        if self.device.id is None:
            raise ConfigError("no device id: pass --device-id or set id in the [device] section")
        return self.device.id


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """Split ``mqtt://host:port`` / ``mqtts://host:port`` into (scheme, host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not a broker URL: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} has a bad port number") from exc
    default = 8883 if parts.scheme == "mqtts" else 1883
    return parts.scheme, parts.hostname, port or default


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``top`` merged in (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_config_overrides(args: dict[str, Any]) -> dict[str, Any]:
    """The ``set_config`` command's args as a partial agent config (the contract's two forms).

    ``{"telemetry": {"interval_s": 30}}`` and ``{"telemetry.interval_s": 30}`` (what
    ``cityedge fleet command ... --arg telemetry.interval_s=30`` sends) mean the same; both may be
    mixed. The real agent and the simulator both read the args through this function, and both
    validate the result as an ``AgentConfig`` (``validate_layer``), so they answer alike.
    """
    if not args:
        raise ConfigError("set_config needs the settings to change in its args")
    out: dict[str, Any] = {}
    for key, value in args.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"set_config: {key!r} is not a setting name (e.g. telemetry.interval_s)")
        nested: Any = value
        for part in reversed(parts[1:]):
            nested = {part: nested}
        head = parts[0]
        if head in out and not (isinstance(out[head], dict) and isinstance(nested, dict)):
            raise ConfigError(f"set_config: {key!r} is given twice")
        out[head] = deep_merge(out[head], nested) if head in out else nested
    device = out.get("device")
    if "data_dir" in out or (isinstance(device, dict) and "id" in device):
        raise ConfigError("data_dir and device.id cannot be changed remotely")
    return out


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see the agent documentation for valid keys)"
        parts.append(f"field '{loc}': {msg}")
    return "; ".join(parts)


def validate_layer(data: dict[str, Any], source: str) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation(exc)}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; errors name the file and the problem."""
    toml = importlib.import_module("tomllib" if _has_tomllib() else "tomli")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text") from exc
    try:
        data: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    return data


def _has_tomllib() -> bool:
    return sys.version_info >= (3, 11)


def load_config(
    path: Path | None,
    flags: dict[str, Any] | None = None,
    layers: list[tuple[str, dict[str, Any]]] | None = None,
) -> AgentConfig:
    """Build the configuration: the file, then ``layers`` in order (each a source name and a dict:
    desired state, set_config overrides), then command-line flags (which win).

    Each layer is validated as it is added so that the error names where the bad value came from.
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    config = validate_layer(data, f"config file {path}" if path is not None else "built-in defaults")
    for source, layer in [*(layers or []), ("command-line flags", flags or {})]:
        if layer:
            data = deep_merge(data, layer)
            config = validate_layer(data, source)
    return config


def kind_matches(kind: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatchcase(kind, pattern) for pattern in patterns)
