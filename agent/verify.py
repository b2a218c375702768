"""Verification of fleet-signed commands and desired state on the device.

Split as in python-tuf: ``check_command`` / ``check_desired`` are a pure core (message, keys,
``now`` and limits in, a verified summary or a typed rejection out); ``SignedCommandVerifier`` is
the I/O shell that reads the clock, the trust store and the persistent replay window
(``agent.replay.ReplayStore``).

Every rejection is a ``CommandRejected`` subclass whose ``reason`` says what was wrong, e.g.
``command expired at 2026-11-22T21:30:00.000Z`` or ``replayed command (nonce already used)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import CommandRejected
from agent.replay import ReplayStore
from agent.truststore import TrustStore, trust_dir
from protocol.clock import BUILD_TIME, ClockNotSet, check_clock
from protocol.errors import SignatureError
from protocol.signing import verify as verify_signature
from protocol.timefmt import format_ts, parse_ts, utc_now
from protocol.trust import KeyListNotNewer, TrustError


class VerificationError(CommandRejected):
    """Base of every reason a signed command or desired state is refused."""


class MalformedMessage(VerificationError):
    """Not a JSON object of the expected shape (a field missing or of the wrong type)."""


class SignatureRejected(VerificationError):
    """Unsigned, signed by a key the device does not trust, or content changed after signing."""


class Expired(VerificationError):
    """``expires_at`` is in the past."""


class IssuedInFuture(VerificationError):
    """``issued_at`` is further ahead of the device clock than the allowed skew."""


class LifetimeTooLong(VerificationError):
    """``expires_at - issued_at`` is longer than the device allows."""


class Replayed(VerificationError):
    """The nonce was already used (or the desired state is older than the one applied)."""


class WrongDevice(VerificationError):
    """The message names another device."""


class TrustRejected(VerificationError):
    """A newer fleet key list came with the message but is not signed by the root or expired."""


class ClockUnsynced(VerificationError, ClockNotSet):
    """The device clock is before the build time: no expiry decision can be trusted."""


@dataclass(frozen=True)
class VerifyPolicy:
    """Limits of the verifier (hard limits, python-tuf style)."""

    max_skew: timedelta = timedelta(minutes=5)
    """How far ``issued_at`` may be ahead of the device clock. There is no grace after ``expires_at``:
    the contract refuses an expired message, as the development verifier and the simulator do."""
    max_ttl: timedelta = timedelta(days=1)
    """Longest command lifetime accepted."""
    max_desired_ttl: timedelta = timedelta(days=90)
    """Longest desired-state lifetime accepted (it is retained, so it lives longer)."""
    max_bytes: int = 256 * 1024
    build_time: datetime = BUILD_TIME


@dataclass(frozen=True)
class Verified:
    """What a verified message proved: who signed it, its nonce and validity window."""

    kind: str  # "command" | "desired"
    kid: str
    nonce: str
    issued_at: datetime
    expires_at: datetime
    version: int | None = None


# --- pure core -------------------------------------------------------------------------------------


def parse_payload(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Bytes from the wire to a JSON object, or MalformedMessage saying why."""
    if len(payload) > max_bytes:
        raise MalformedMessage(f"message of {len(payload)} bytes is over the {max_bytes}-byte limit")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedMessage("message is not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("message is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage(f"message is a JSON {type(obj).__name__}, not an object")
    return obj


def _time(message: Mapping[str, Any], field: str, what: str) -> datetime:
    value = message.get(field)
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} has no '{field}' time")
    try:
        return parse_ts(value)
    except (ValueError, OverflowError) as exc:
        raise MalformedMessage(f"{what} field '{field}': not a usable time ({exc})") from exc


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds} s"


def check_signature(message: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey], what: str) -> str:
    """Return the kid whose signature verifies, or SignatureRejected."""
    if "sig" not in message:
        raise SignatureRejected(f"unsigned {what} refused (commands.require_signature is on)")
    try:
        return verify_signature(message, keys)
    except SignatureError as exc:
        raise SignatureRejected(f"{what} refused: {exc}") from exc
    except (TypeError, ValueError, UnicodeError, RecursionError) as exc:
        raise MalformedMessage(f"{what} cannot be encoded as canonical JSON") from exc
    except AttributeError as exc:  # a 'sig' that is not an object with string members
        raise MalformedMessage(f"{what} has a malformed 'sig'") from exc


def check_window(
    message: Mapping[str, Any], now: datetime, max_skew: timedelta, max_ttl: timedelta, what: str
) -> tuple[datetime, datetime]:
    """Check issued_at / expires_at against ``now``; return both."""
    issued = _time(message, "issued_at", what)
    expires = _time(message, "expires_at", what)
    if expires < issued:
        raise MalformedMessage(f"{what} expires ({format_ts(expires)}) before it is issued")
    if expires - issued > max_ttl:
        raise LifetimeTooLong(
            f"{what} lifetime {_human(expires - issued)} is longer than the {_human(max_ttl)} allowed"
        )
    if issued - now > max_skew:
        raise IssuedInFuture(
            f"{what} issued in the future (issued_at {format_ts(issued)}, device clock {format_ts(now)}, "
            f"allowed skew {_human(max_skew)}): check the device time or the fleet time"
        )
    if now > expires:
        raise Expired(f"{what} expired at {format_ts(expires)}")
    return issued, expires


def _nonce(message: Mapping[str, Any], what: str) -> str:
    nonce = message.get("nonce")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 128:
        raise MalformedMessage(f"{what} has no valid 'nonce'")
    return nonce


def _check_device(message: Mapping[str, Any], device_id: str | None, what: str) -> None:
    target = message.get("device")
    if target is not None and device_id is not None and target != device_id:
        raise WrongDevice(f"{what} is addressed to device {target!r}, not to this device ({device_id})")


def check_command(
    message: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
    policy: VerifyPolicy,
    device_id: str | None = None,
) -> Verified:
    """Pure: signature, then shape and time window of a command (no replay check)."""
    if not isinstance(message, Mapping):
        raise MalformedMessage("command is not a JSON object")
    kid = check_signature(message, keys, "command")
    for field in ("id", "name"):
        value = message.get(field)
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            raise MalformedMessage(f"command has no valid '{field}'")
    _check_device(message, device_id, "command")
    nonce = _nonce(message, "command")
    issued, expires = check_window(message, now, policy.max_skew, policy.max_ttl, "command")
    return Verified("command", kid, nonce, issued, expires)


def check_desired(
    message: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
    policy: VerifyPolicy,
    applied_version: int | None,
    device_id: str | None = None,
) -> Verified:
    """Pure: signature, shape, time window and version of a desired state.

    A retained desired state arrives again on every reconnect, so the same version is accepted
    again; an older version than the one applied is a replay.
    """
    if not isinstance(message, Mapping):
        raise MalformedMessage("desired state is not a JSON object")
    kid = check_signature(message, keys, "desired state")
    version = message.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MalformedMessage("desired state has no valid 'version'")
    _check_device(message, device_id, "desired state")
    nonce = _nonce(message, "desired state")
    issued, expires = check_window(message, now, policy.max_skew, policy.max_desired_ttl, "desired state")
    if applied_version is not None and version < applied_version:
        raise Replayed(
            f"replayed desired state (version {version} is older than the applied version {applied_version})"
        )
    return Verified("desired", kid, nonce, issued, expires, version)


def is_desired_state(message: Mapping[str, Any]) -> bool:
    """Commands have a ``name``; desired states have ``version``/``config`` and no name."""
    return "name" not in message and ("config" in message or "version" in message)


# --- I/O shell -------------------------------------------------------------------------------------

TrustedKeys: TypeAlias = "TrustStore | Mapping[str, Ed25519PublicKey]"


class SignedCommandVerifier:
    """The agent's ``CommandVerifier``: ``verify(message)`` returns or raises CommandRejected."""

    def __init__(
        self,
        trusted_keys: TrustedKeys,
        replay_store: ReplayStore,
        clock: Callable[[], datetime] = utc_now,
        max_skew: timedelta = VerifyPolicy.max_skew,
        max_ttl: timedelta = VerifyPolicy.max_ttl,
        *,
        max_desired_ttl: timedelta = VerifyPolicy.max_desired_ttl,
        build_time: datetime = BUILD_TIME,
        device_id: str | None = None,
    ) -> None:
        self._trust = trusted_keys
        self._replay = replay_store
        self._clock = clock
        self.device_id = device_id
        self.policy = VerifyPolicy(max_skew, max_ttl, max_desired_ttl, build_time=build_time)

    def _now(self) -> datetime:
        try:
            return check_clock(self._clock(), self.policy.build_time)
        except ClockNotSet as exc:
            raise ClockUnsynced(f"refused: {exc}") from exc

    def _keys(self, now: datetime) -> Mapping[str, Ed25519PublicKey]:
        if isinstance(self._trust, TrustStore):
            return self._trust.command_keys(now)
        return self._trust

    def verify(self, message: Mapping[str, Any]) -> None:
        """Verify a command or (told apart by its fields) a desired state."""
        if not isinstance(message, Mapping):
            raise MalformedMessage("message is not a JSON object")
        if is_desired_state(message):
            self.verify_desired(message)
        else:
            self.verify_command(message)

    def verify_payload(self, payload: bytes) -> Verified:
        message = parse_payload(payload, self.policy.max_bytes)
        if is_desired_state(message):
            return self.verify_desired(message)
        return self.verify_command(message)

    def verify_command(self, message: Mapping[str, Any]) -> Verified:
        now = self._now()
        verified = check_command(message, self._keys(now), now, self.policy, self.device_id)
        if not self._replay.remember(verified.nonce, verified.expires_at + self.policy.max_skew, now):
            raise Replayed("replayed command (nonce already used)")
        return verified

    def verify_desired(self, message: Mapping[str, Any]) -> Verified:
        now = self._now()
        self._apply_trust(message.get("trust"), now)
        verified = check_desired(
            message, self._keys(now), now, self.policy, self._replay.desired_version(), self.device_id
        )
        assert verified.version is not None
        self._replay.set_desired_version(verified.version)
        return verified

    def _apply_trust(self, document: object, now: datetime) -> None:
        """Take a newer root-signed key list before checking the outer signature."""
        if document is None or not isinstance(self._trust, TrustStore):
            return
        if not isinstance(document, Mapping):
            raise MalformedMessage("desired state member 'trust' is not an object")
        try:
            self._trust.apply(document, now)
        except KeyListNotNewer:
            return  # the list in use, or an older one: nothing to change
        except TrustError as exc:
            raise TrustRejected(f"fleet key list refused: {exc}") from exc


def build_verifier(
    data_dir: Path,
    *,
    device_id: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    fsync: bool = True,
) -> SignedCommandVerifier:
    """The verifier of an enrolled device: trust from ``DATA_DIR/trust``, replay window in
    ``DATA_DIR/replay.db``. Raises TrustStoreError when the device is not enrolled."""
    trust = TrustStore.load(trust_dir(data_dir))
    replay = ReplayStore(Path(data_dir) / "replay.db", fsync=fsync)
    return SignedCommandVerifier(trust, replay, clock, device_id=device_id)
