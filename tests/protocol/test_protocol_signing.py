"""Canonical JSON and ed25519 signatures (evidence envelopes, commands)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import SignatureError
from protocol.signing import canonical_json, sign, verify


def test_canonical_json_sorts_keys_drops_sig_and_keeps_unicode() -> None:
    msg = {"b": 1, "a": "Hà Nội", "sig": {"x": 1}}
    assert canonical_json(msg) == '{"a":"Hà Nội","b":1}'.encode()


def test_signature_verifies_and_fails_after_a_one_byte_change() -> None:
    key = Ed25519PrivateKey.generate()
    env = {
        "id": "01J",
        "seq": 1,
        "ts": "2026-11-22T21:30:00.000Z",
        "device": "cam-hn-0001",
        "kind": "traffic.violation",
        "data": {"image_sha256": "ab" * 32},
    }
    signed = sign(env, key, "cam-hn-0001")
    assert verify(signed, {"cam-hn-0001": key.public_key()}) == "cam-hn-0001"
    tampered = json.loads(json.dumps(signed))
    tampered["data"]["image_sha256"] = "ac" + "ab" * 31
    with pytest.raises(SignatureError, match="does not match"):
        verify(tampered, {"cam-hn-0001": key.public_key()})


def test_verify_explains_each_failure() -> None:
    key = Ed25519PrivateKey.generate()
    keys = {"k1": key.public_key()}
    signed = sign({"a": 1}, key, "k1")
    with pytest.raises(SignatureError, match="not signed"):
        verify({"a": 1}, keys)
    with pytest.raises(SignatureError, match="unknown signing key"):
        verify(sign({"a": 1}, key, "k2"), keys)
    with pytest.raises(SignatureError, match="algorithm"):
        verify({**signed, "sig": {**signed["sig"], "alg": "rsa"}}, keys)
    with pytest.raises(SignatureError, match="base64"):
        verify({**signed, "sig": {**signed["sig"], "value": "***"}}, keys)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="does not match"):
        verify(signed, {"k1": other.public_key()})


@given(st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=10), max_size=6), st.data())
def test_any_single_value_change_breaks_the_signature(msg: dict[str, object], data: st.DataObject) -> None:
    msg.pop("sig", None)
    key = Ed25519PrivateKey.generate()
    signed = sign(msg, key, "k")
    verify(signed, {"k": key.public_key()})
    if not msg:
        return
    field = data.draw(st.sampled_from(sorted(msg)))
    changed = dict(signed)
    changed[field] = [msg[field]]  # any different value
    with pytest.raises(SignatureError):
        verify(changed, {"k": key.public_key()})
