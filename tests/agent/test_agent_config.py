"""Agent configuration: layers, validation messages, descriptions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import AgentConfig, load_config, parse_broker_url
from agent.errors import ConfigError
from agent.link import backoff_delay


def all_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    out = []
    for name, info in model.model_fields.items():
        out.append((prefix + name, info.description))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(all_fields(annotation, f"{prefix}{name}."))
    return out


def test_every_setting_has_a_description() -> None:
    missing = [name for name, description in all_fields(AgentConfig) if not description]
    assert missing == []


def test_defaults_need_only_a_device_id() -> None:
    config = load_config(None, {"device": {"id": "kiosk-hn-btl-0001"}})
    assert config.mqtt.topic_prefix == "city/v1"
    assert config.outbox.fsync == "full"
    assert config.commands.require_signature is True
    assert config.system.backend == "simulated"
    with pytest.raises(ConfigError, match="no device id"):
        _ = load_config(None).device_id


def test_flags_win_over_the_file_and_layers(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nid = "kiosk-a-0001"\nrole = "kiosk"\n'
        '[mqtt]\nbroker = "mqtt://a:1"\n[telemetry]\ninterval_s = 5\n'
    )
    config = load_config(
        path,
        {"mqtt": {"broker": "mqtts://broker.city.example:8883"}},
        [("set_config", {"telemetry": {"interval_s": 7}})],
    )
    assert config.device.role == "kiosk"
    assert config.mqtt.use_tls and config.mqtt.host == "broker.city.example" and config.mqtt.port == 8883
    assert config.telemetry.interval_s == 7


def test_errors_name_the_source_and_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[telemetry]\nqos = 2\n")
    with pytest.raises(ConfigError, match=r"agent.toml: field 'telemetry.qos'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"set_config: field 'outbox.fsync'"):
        load_config(None, {}, [("set_config", {"outbox": {"fsync": "sometimes"}})])
    with pytest.raises(ConfigError, match=r"tls\.cert and tls\.key must be given together"):
        load_config(None, {"mqtt": {"tls": {"cert": "/x.pem"}}})
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("mqtt", "127.0.0.1", 1884)),
        ("mqtts://broker.example", ("mqtts", "broker.example", 8883)),
        ("mqtt://broker", ("mqtt", "broker", 1883)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url", ["http://x:1", "mqtt://", "broker:1883", "mqtt://x:notaport"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_broker_url(url)


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 1.0, 60.0, rng) for attempt in range(40)]
    assert all(0.05 <= d <= 60.0 for d in delays)
    assert max(delays[:3]) <= 4.0
    assert len({round(d, 3) for d in delays}) > 30  # jittered, not a fixed ladder


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "agent" / "agent.example.toml"
    config = load_config(example)
    assert config.device_id == "kiosk-hn-btl-0001" and config.mqtt.use_tls
    assert config.local_api.socket_mode == 0o660
