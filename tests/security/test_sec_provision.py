"""The technician tool says what went wrong in plain words: wrong clock, expired or used token,
unreachable or untrusted fleet, certificate not yet valid; plus label, status and selftest offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleet.broker import free_port
from fleet.claims import ClaimStore
from fleet.pki import CityPKI
from protocol.timefmt import utc_now
from provisioning.cli import build_provision_app
from provisioning.enroll import default_device_id, read_claim
from provisioning.errors import ClaimProblem

DEVICE = "kiosk-hn-btl-0007"
BROKER = "mqtts://127.0.0.1:8883"


class Result:
    """CLI result with the output's line wrapping (rich wraps at the terminal width) undone."""

    def __init__(self, raw: Any) -> None:
        self.exit_code: int = raw.exit_code
        self.raw_output: str = raw.output
        self.output = " ".join(raw.output.split())


def run(*args: str, clock: Callable[[], datetime] = utc_now) -> Result:
    return Result(CliRunner().invoke(build_provision_app(clock=clock), list(args)))


def enroll_args(fleet: Any, token: str, data: Path, *extra: str) -> list[str]:
    return [
        "enroll", "--claim", token, "--role", "kiosk", "--site", "hn-btl", "--fleet", fleet.url,
        "--data-dir", str(data), "--device-id", DEVICE, "--no-start", *extra,
    ]  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path, make_enroll_fleet: Callable[..., Any]) -> Any:
    return make_enroll_fleet(CityPKI.init(tmp_path / "pki"), BROKER)


def test_wrong_clock_is_named_before_anything_else(tmp_path: Path) -> None:
    res = run(
        "enroll", "--claim", "ce1.x", "--role", "kiosk", "--site", "hn-btl", "--fleet", "https://127.0.0.1:1",
        "--data-dir", str(tmp_path / "d"), "--no-start",
        clock=lambda: datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc),
    )  # fmt: skip
    assert res.exit_code == 3
    assert "device clock is wrong" in res.output and "1970-01-01" in res.output
    assert "set the time first" in res.output
    assert not (tmp_path / "d" / "device_key.pem").exists()  # nothing done on a wrong clock


def test_unreachable_fleet(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    res = run(
        "enroll", "--claim", "ce1.abc", "--role", "kiosk", "--site", "hn-btl", "--fleet", url,
        "--data-dir", str(tmp_path / "d"), "--device-id", DEVICE, "--no-start", "--json",
    )  # fmt: skip
    assert res.exit_code == 4
    doc = json.loads(res.output)
    assert "cannot reach the fleet" in doc["error"] and "connection refused" in doc["error"]
    assert "check the network" in doc["what_to_do"]


def test_plain_http_to_a_remote_fleet_is_refused(tmp_path: Path) -> None:
    res = run(*enroll_args(type("F", (), {"url": "http://fleet.example.org"})(), "ce1.a", tmp_path / "d"))
    assert res.exit_code == 1 and "refusing to send a claim token over plain http" in res.output


def test_untrusted_fleet_certificate(tmp_path: Path, fleet: Any) -> None:
    res = run(*enroll_args(fleet, fleet.claim(), tmp_path / "d"))  # no --ca: system CAs do not know it
    assert res.exit_code == 6
    assert "is not trusted" in res.output


def test_expired_and_used_tokens(tmp_path: Path, fleet: Any) -> None:
    past = ClaimStore(fleet.claims.engine, clock=lambda: utc_now() - timedelta(hours=2))
    expired = past.create("kiosk", "hn-btl").token
    assert expired is not None
    res = run(*enroll_args(fleet, expired, tmp_path / "a", "--ca", str(fleet.ca)))
    assert res.exit_code == 5
    assert (
        "claim token expired at" in res.output
        and "ask the fleet operator for a new claim token" in res.output
    )

    token = fleet.claim()
    assert run(*enroll_args(fleet, token, tmp_path / "b", "--ca", str(fleet.ca))).exit_code == 0
    res = run(*enroll_args(fleet, token, tmp_path / "c", "--ca", str(fleet.ca), "--json"))
    assert res.exit_code == 5
    assert "claim token already used" in json.loads(res.output)["error"]


def test_wrong_role_for_the_token(tmp_path: Path, fleet: Any) -> None:
    args = enroll_args(fleet, fleet.claim("camera", "hn-btl"), tmp_path / "a", "--ca", str(fleet.ca))
    res = run(*args)
    assert res.exit_code == 5 and "claim token is for a camera at site hn-btl, not a kiosk" in res.output


def test_certificate_not_yet_valid_means_the_clock_is_behind(tmp_path: Path, fleet: Any) -> None:
    behind = lambda: utc_now() - timedelta(hours=3)  # noqa: E731 - after the build time, but 3 h slow
    res = run(*enroll_args(fleet, fleet.claim(), tmp_path / "a", "--ca", str(fleet.ca)), clock=behind)
    assert res.exit_code == 3
    assert "not yet valid" in res.output and "clock is behind" in res.output


def test_enrolled_device_status_label_and_offline_selftest(tmp_path: Path, fleet: Any) -> None:
    data = tmp_path / "d"
    res = run(*enroll_args(fleet, fleet.claim(), data, "--ca", str(fleet.ca)))
    assert res.exit_code == 0, res.output
    assert "✓ Check the device clock" in res.output and "Enrolled kiosk-hn-btl-0007" in res.output

    again = run(*enroll_args(fleet, fleet.claim(), data, "--ca", str(fleet.ca)))
    assert again.exit_code == 9 and "already enrolled" in again.output

    status = json.loads(run("status", "--data-dir", str(data), "--json").output)
    assert status["device_id"] == DEVICE and status["role"] == "kiosk" and status["site"] == "hn-btl"
    assert status["agent"]["running"] is False

    out = tmp_path / "label.png"
    res = run(
        "label", "--data-dir", str(data), "--out", str(out), "--fleet-url", "https://fleet.city.example"
    )
    assert res.exit_code == 0, res.output
    import zxingcpp
    from PIL import Image

    codes = zxingcpp.read_barcodes(Image.open(out).convert("L"))
    assert [c.text for c in codes] == [f"https://fleet.city.example/devices/{DEVICE}"]

    res = run(
        "selftest", "--data-dir", str(data), "--json", "--scanner", "loop://", "--camera", "/nonexistent.mp4"
    )
    doc = json.loads(res.output)
    checks = {c["name"]: c for c in doc["checks"]}
    assert res.exit_code == 1 and not doc["ok"]
    assert checks["broker"]["status"] == "fail" and "broker" in checks["broker"]["detail"]
    assert checks["broker"]["fix"]
    assert checks["scanner"]["status"] == "ok"
    assert checks["camera"]["status"] == "fail" and checks["camera"]["fix"]
    assert checks["printer"]["detail"] == "not configured"


def test_selftest_on_a_blank_device(tmp_path: Path) -> None:
    res = run("selftest", "--data-dir", str(tmp_path), "--json")
    checks = {c["name"]: c for c in json.loads(res.output)["checks"]}
    assert checks["identity"]["status"] == "fail" and "not enrolled" in checks["identity"]["detail"]
    assert "cityedge provision enroll" in checks["identity"]["fix"]
    assert checks["clock"]["status"] == "ok" and checks["disk"]["status"] == "ok"


def test_claim_input_forms(tmp_path: Path) -> None:
    assert read_claim(" ce1.abc ").token == "ce1.abc"
    (tmp_path / "t").write_text("ce1.fromfile\n")
    assert read_claim(f"@{tmp_path / 't'}").token == "ce1.fromfile"
    scanned = read_claim("cityedge:claim?token=ce1.q&role=camera&site=hn-gbt&fleet=https%3A%2F%2Ff")
    assert (scanned.token, scanned.role, scanned.site, scanned.fleet_url) == (
        "ce1.q",
        "camera",
        "hn-gbt",
        "https://f",
    )
    with pytest.raises(ClaimProblem, match="cannot read the claim token file"):
        read_claim(f"@{tmp_path / 'missing'}")
    assert default_device_id("camera", "hn-gbt").startswith("cam-hn-gbt-")


def test_renew_without_a_site_visit(tmp_path: Path, fleet: Any) -> None:
    data = tmp_path / "d"
    assert run(*enroll_args(fleet, fleet.claim(), data, "--ca", str(fleet.ca))).exit_code == 0
    cert_before, key_before = (
        (data / "tls" / "device.crt").read_bytes(),
        (data / "device_key.pem").read_bytes(),
    )
    res = run("renew", "--data-dir", str(data), "--json")
    assert res.exit_code == 0, res.output
    assert (data / "tls" / "device.crt").read_bytes() != cert_before
    assert (data / "device_key.pem").read_bytes() == key_before
    res = run("renew", "--data-dir", str(data), "--new-key")
    assert res.exit_code == 0, res.output
    assert (data / "device_key.pem").read_bytes() != key_before
    assert (data / "device_key.pem").stat().st_mode & 0o777 == 0o600
    fleet.pki.check_certificate((data / "tls" / "device.crt").read_bytes())


def test_fleet_claim_cli(tmp_path: Path) -> None:
    import typer

    from fleet.enroll_cli import register_claims

    app, fleet_app = typer.Typer(), typer.Typer()
    register_claims(fleet_app)
    app.add_typer(fleet_app, name="fleet")
    data = ["--data-dir", str(tmp_path / "fleet")]
    out = tmp_path / "claim.txt"
    res = CliRunner().invoke(
        app, ["fleet", "claim", "create", "--role", "kiosk", "--site", "hn-btl", "--ttl", "30m", "--qr",
              "--out", str(out), "--fleet-url", "https://fleet.example", *data],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    token = out.read_text().strip()
    assert token.startswith("ce1.") and token in res.output
    assert "█" in res.output or "▀" in res.output  # the QR code for the technician's phone
    assert out.stat().st_mode & 0o777 == 0o600
    assert read_claim(f"@{out}").token == token
    res = CliRunner().invoke(app, ["fleet", "claim", "create", "--role", "bus", "--site", "hn-btl", *data])
    assert res.exit_code == 1 and "role 'bus' is not one of kiosk, camera" in res.output
    res = CliRunner().invoke(app, ["fleet", "claim", "list", *data])
    assert res.exit_code == 0 and "hn-btl" in res.output
