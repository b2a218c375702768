"""Property tests: the verifier answers every input with acceptance or a typed rejection, and no
single-character change of signed content survives verification."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.replay import ReplayStore
from agent.truststore import TrustStore
from agent.verify import SignedCommandVerifier, VerificationError, VerifyPolicy, check_command
from fleet.signer import Ed25519Signer
from protocol.signing import canonical_json
from protocol.trust import FleetKey, RootKey, build_key_list, key_id, sign_key_list

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
ROOT = Ed25519PrivateKey.generate()
KEY = Ed25519PrivateKey.generate()
KID = key_id("fleet", KEY.public_key())
KEYS = {KID: KEY.public_key()}
SIGNER = Ed25519Signer(KEY, KID, clock=lambda: NOW)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
key_lists = st.builds(
    lambda version, days: sign_key_list(
        build_key_list(version, NOW + timedelta(days=days), [FleetKey(KID, KEY.public_key(), None)]),
        ROOT,
    ),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=-2, max_value=2),
)
field_names = st.sampled_from(
    ["id", "name", "args", "issued_at", "expires_at", "nonce", "sig", "version", "config", "trust", "device"]
)
times = st.sampled_from(
    [
        "2027-03-01T12:00:00.000Z",
        "2027-03-01T12:10:00Z",
        "2026-01-01T00:00:00Z",
        "yesterday",
        "",
        "2027-13-01T00:00Z",
    ]
) | st.builds(
    lambda moment, offset: moment.replace(tzinfo=timezone(timedelta(minutes=offset))).isoformat(),
    st.datetimes(),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
messages = st.dictionaries(field_names | st.text(max_size=6), json_values | times | key_lists, max_size=8)
sigs = (
    st.fixed_dictionaries(
        {"alg": st.sampled_from(["ed25519", "rsa", ""]) | json_values, "kid": st.just(KID) | json_values}
    )
    | json_values
)


@pytest.fixture(scope="module", params=["static-keys", "trust-store"])
def verifier(request: pytest.FixtureRequest) -> Iterator[SignedCommandVerifier]:
    """Once with a plain key map, once with a trust store (so ``trust`` members are processed)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ReplayStore(Path(tmp) / "replay.db", fsync=False)
        trusted: Any = KEYS
        if request.param == "trust-store":
            document = sign_key_list(
                build_key_list(1, NOW + timedelta(days=30), [FleetKey(KID, KEY.public_key(), None)]), ROOT
            )
            trusted = TrustStore.install(Path(tmp) / "trust", RootKey.from_private(ROOT), document, NOW)
        yield SignedCommandVerifier(trusted, store, clock=lambda: NOW)
        store.close()


def outcome(verifier: SignedCommandVerifier, message: Any) -> None:
    try:
        verifier.verify(message)
    except VerificationError as exc:
        assert exc.reason  # a typed rejection always says why


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=400))
def test_arbitrary_bytes(verifier: SignedCommandVerifier, payload: bytes) -> None:
    try:
        verifier.verify_payload(payload)
    except VerificationError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages, sig=sigs)
def test_arbitrary_json_objects(verifier: SignedCommandVerifier, message: dict[str, Any], sig: Any) -> None:
    outcome(verifier, message)
    outcome(verifier, {**message, "sig": sig})
    outcome(verifier, json.dumps({**message, "sig": sig}).encode())  # not even a dict


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages)
def test_validly_signed_arbitrary_content(verifier: SignedCommandVerifier, message: dict[str, Any]) -> None:
    """Signed by the trusted key, but any shape: accepted or refused with a reason, nothing else."""
    try:
        signed = SIGNER.sign(message)
    except (TypeError, ValueError, UnicodeError):
        return  # content that cannot even be signed
    outcome(verifier, signed)


SIGNED = SIGNER.sign({"id": "cmd-1", "name": "reboot", "args": {"delay_s": 5, "why": "ốm"}})
CANONICAL = canonical_json(SIGNED).decode("utf-8")


@settings(max_examples=500, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(CANONICAL) - 1),
    replacement=st.characters(codec="utf-8", exclude_characters="\x00"),
)
def test_any_single_character_change_fails_verification(position: int, replacement: str) -> None:
    assume(CANONICAL[position] != replacement)
    mutated = CANONICAL[:position] + replacement + CANONICAL[position + 1 :]
    try:
        body = json.loads(mutated)
    except ValueError:
        return  # no longer JSON: refused by the parser
    if not isinstance(body, dict):
        return
    body["sig"] = SIGNED["sig"]
    assume(canonical_json(body) != CANONICAL.encode("utf-8"))
    with pytest.raises(VerificationError):
        check_command(body, KEYS, NOW + timedelta(minutes=1), VerifyPolicy())


def test_the_unmutated_command_verifies() -> None:
    assert check_command(json.loads(CANONICAL) | {"sig": SIGNED["sig"]}, KEYS, NOW, VerifyPolicy()).kid == KID
