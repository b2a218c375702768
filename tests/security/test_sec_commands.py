"""Signed commands and desired state: forgery, tampering, expiry, clock, replay (also across a restart)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import CommandRejected
from agent.replay import ReplayStore
from agent.truststore import TrustStore
from agent.verify import (
    ClockUnsynced,
    Expired,
    IssuedInFuture,
    LifetimeTooLong,
    MalformedMessage,
    Replayed,
    SignatureRejected,
    SignedCommandVerifier,
    WrongDevice,
    build_verifier,
)
from fleet.signer import Ed25519Signer
from protocol.clock import ClockNotSet
from protocol.models import Command, ShadowDesired, decode
from protocol.signing import sign
from protocol.timefmt import format_ts
from protocol.trust import FleetKey, RootKey, build_key_list, key_id, sign_key_list

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Fleet:
    """A root key, one command key, and a device data dir trusting them."""

    data_dir: Path
    root: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    clock: Clock = field(default_factory=Clock)

    @property
    def kid(self) -> str:
        return key_id("fleet", self.key.public_key())

    def key_list(self, version: int, keys: list[Ed25519PrivateKey], days: int = 365) -> dict[str, Any]:
        entries = [FleetKey(key_id("fleet", k.public_key()), k.public_key(), None) for k in keys]
        return sign_key_list(
            build_key_list(version, self.clock.now + timedelta(days=days), entries), self.root
        )

    def install(self) -> TrustStore:
        return TrustStore.install(
            self.data_dir / "trust",
            RootKey.from_private(self.root),
            self.key_list(1, [self.key]),
            self.clock.now,
        )

    def signer(self, key: Ed25519PrivateKey | None = None) -> Ed25519Signer:
        k = key or self.key
        return Ed25519Signer(k, key_id("fleet", k.public_key()), clock=self.clock)

    def verifier(self) -> SignedCommandVerifier:
        return build_verifier(self.data_dir, clock=self.clock, device_id="kiosk-hn-btl-0001")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "device")
    f.install()
    yield f


def command(name: str = "ping", **extra: Any) -> dict[str, Any]:
    return {"id": f"cmd-{name}", "name": name, "args": {}, **extra}


def test_valid_signed_command_is_accepted_and_matches_the_contract(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    decode(Command, Command.model_validate(signed).to_bytes())  # still a contract Command
    verified = fleet.verifier().verify_command(signed)
    assert verified.kid == fleet.kid
    assert verified.nonce == signed["nonce"]


def test_unsigned_command_is_refused(fleet: Fleet) -> None:
    msg = command(issued_at=format_ts(NOW), expires_at=format_ts(NOW + timedelta(minutes=1)), nonce="n1")
    with pytest.raises(SignatureRejected, match="unsigned command refused"):
        fleet.verifier().verify(msg)


def test_command_signed_by_unknown_key_is_refused(fleet: Fleet) -> None:
    forged = fleet.signer(Ed25519PrivateKey.generate()).sign(command("reboot"))
    with pytest.raises(SignatureRejected, match="unknown signing key"):
        fleet.verifier().verify(forged)


def test_forged_signature_under_the_trusted_kid_is_refused(fleet: Fleet) -> None:
    body = fleet.signer().sign(command("reboot"))
    forged = sign(body, Ed25519PrivateKey.generate(), fleet.kid)
    with pytest.raises(SignatureRejected, match="does not match the content"):
        fleet.verifier().verify(forged)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [("name", "reboot"), ("args", {"delay": 0}), ("expires_at", "2099-01-01T00:00:00.000Z"), ("nonce", "x")],
)
def test_tampered_command_is_refused(fleet: Fleet, field_name: str, value: Any) -> None:
    signed = fleet.signer().sign(command())
    signed[field_name] = value
    with pytest.raises(SignatureRejected, match="does not match the content"):
        fleet.verifier().verify(signed)


def test_expired_command_is_refused_with_its_expiry_time(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    fleet.clock.now = NOW + timedelta(hours=2)
    with pytest.raises(Expired, match=r"command expired at 2027-03-01T12:15:00\.000Z"):
        fleet.verifier().verify(signed)


def test_command_issued_in_the_future_is_refused(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    fleet.clock.now = NOW - timedelta(minutes=10)
    with pytest.raises(IssuedInFuture, match="issued in the future"):
        fleet.verifier().verify(signed)


def test_small_clock_skew_is_tolerated(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    fleet.clock.now = NOW - timedelta(minutes=2)
    fleet.verifier().verify(signed)


def test_command_with_too_long_a_lifetime_is_refused(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command(expires_at=format_ts(NOW + timedelta(days=30))))
    with pytest.raises(LifetimeTooLong, match="longer than the 1 d allowed"):
        fleet.verifier().verify(signed)


def test_replayed_command_is_refused(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    verifier = fleet.verifier()
    verifier.verify(signed)
    with pytest.raises(Replayed, match=r"replayed command \(nonce already used\)"):
        verifier.verify(signed)


def test_replay_is_refused_after_a_restart(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    fleet.verifier().verify(signed)
    restarted = fleet.verifier()  # new verifier, same data dir: as after an agent restart
    with pytest.raises(Replayed, match="nonce already used"):
        restarted.verify(signed)


def test_clock_before_build_time_refuses_every_expiry_decision(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command())
    fleet.clock.now = datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
    with pytest.raises(ClockUnsynced, match="clock is before the software build time") as info:
        fleet.verifier().verify(signed)
    assert isinstance(info.value, ClockNotSet) and isinstance(info.value, CommandRejected)


def test_command_for_another_device_is_refused(fleet: Fleet) -> None:
    signed = fleet.signer().sign(command(device="cam-hn-gbt-0042"))
    with pytest.raises(WrongDevice, match="addressed to device 'cam-hn-gbt-0042'"):
        fleet.verifier().verify(signed)


def test_malformed_payloads_are_refused_with_a_reason(fleet: Fleet) -> None:
    verifier = fleet.verifier()
    with pytest.raises(MalformedMessage, match="not valid JSON"):
        verifier.verify_payload(b"{nope")
    with pytest.raises(MalformedMessage, match="not an object"):
        verifier.verify_payload(b"[1, 2]")
    with pytest.raises(MalformedMessage, match="over the"):
        verifier.verify_payload(b" " * 300_000)


def test_replay_window_is_pruned_after_expiry(tmp_path: Path) -> None:
    store = ReplayStore(tmp_path / "replay.db", prune_every=1)
    for i in range(50):
        assert store.remember(f"n{i}", NOW + timedelta(minutes=i), NOW)
    assert len(store) == 50
    assert store.prune(NOW + timedelta(minutes=25, seconds=30)) == 26
    assert len(store) == 24
    assert store.remember("later", NOW + timedelta(days=1), NOW + timedelta(hours=2))
    assert len(store) == 1  # everything expired was pruned on the way in
    assert not store.remember("later", NOW + timedelta(days=1), NOW + timedelta(hours=2))


# --- desired state -----------------------------------------------------------------------------


def desired(version: int, **config: Any) -> dict[str, Any]:
    return ShadowDesired(version=version, config=config).to_dict()


def test_signed_desired_state_is_accepted_again_when_redelivered(fleet: Fleet) -> None:
    signed = fleet.signer().sign(desired(3, telemetry={"interval_s": 10}))
    decode(ShadowDesired, ShadowDesired.model_validate(signed).to_bytes())
    verifier = fleet.verifier()
    verifier.verify(signed)
    fleet.verifier().verify(signed)  # retained: arrives again after every reconnect / restart


def test_older_desired_state_is_a_replay(fleet: Fleet) -> None:
    old = fleet.signer().sign(desired(2))
    new = fleet.signer().sign(desired(3))
    fleet.verifier().verify(new)
    with pytest.raises(Replayed, match="older than the applied version 3"):
        fleet.verifier().verify(old)


def test_desired_state_expiry_and_tampering(fleet: Fleet) -> None:
    signed = fleet.signer().sign(desired(1))
    tampered = dict(signed, config={"system": {"backend": "linux"}})
    with pytest.raises(SignatureRejected):
        fleet.verifier().verify(tampered)
    fleet.clock.now = NOW + timedelta(days=31)
    with pytest.raises(Expired, match="desired state expired at"):
        fleet.verifier().verify(signed)


def test_unsigned_desired_state_is_refused(fleet: Fleet) -> None:
    with pytest.raises(SignatureRejected, match="unsigned desired state"):
        fleet.verifier().verify(desired(1))
