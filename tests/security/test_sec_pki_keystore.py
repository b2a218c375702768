"""Device key stores and the clock guard."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hw.keystore import (
    FileKeyStore,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
    KeyStoreUnavailable,
    Pkcs11KeyStore,
    TpmKeyStore,
)
from protocol.clock import BUILD_TIME, ClockNotSet, check_clock
from protocol.errors import SignatureError
from protocol.keys import verify_data
from protocol.signing import verify


@pytest.mark.parametrize("algorithm", ["ed25519", "p256", "p384"])
def test_file_key_is_private_and_signs(tmp_path: Path, algorithm: str) -> None:
    store = FileKeyStore.create(tmp_path / "keys" / "device.pem", algorithm=algorithm)  # type: ignore[arg-type]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert isinstance(store, KeyStore)
    sig = store.sign(b"evidence")
    verify_data(store.public_key(), sig, b"evidence")
    with pytest.raises(SignatureError):
        verify_data(store.public_key(), sig, b"evidenc3")
    again = FileKeyStore(store.path)
    assert again.fingerprint() == store.fingerprint()
    assert store.key_pem_for_tls() is not None


def test_ed25519_file_key_signs_contract_envelopes(tmp_path: Path) -> None:
    from protocol.signing import canonical_json

    store = FileKeyStore.create(tmp_path / "k.pem")
    envelope = {"id": "01J", "seq": 1, "kind": "traffic.violation", "data": {"x": 1}}
    value = __import__("base64").b64encode(store.sign(canonical_json(envelope))).decode()
    signed = {**envelope, "sig": {"alg": "ed25519", "kid": "dev", "value": value}}
    assert verify(signed, {"dev": store.public_key()}) == "dev"  # type: ignore[dict-item]


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    store = FileKeyStore.create(tmp_path / "k.pem")
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        FileKeyStore.create(tmp_path / "k.pem")
    assert FileKeyStore.open_or_create(tmp_path / "k.pem").fingerprint() == store.fingerprint()


def test_missing_or_damaged_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound, match="no device key"):
        FileKeyStore(tmp_path / "absent.pem")
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyStoreError, match="damaged"):
        FileKeyStore(tmp_path / "bad.pem")


def test_csr_refuses_invalid_device_id(tmp_path: Path) -> None:
    from protocol.errors import TopicError

    with pytest.raises(TopicError):
        FileKeyStore.create(tmp_path / "k.pem").csr("Bad Id")


def test_hardware_key_stores_say_they_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreUnavailable, match="hardware key store not available on this device"):
        Pkcs11KeyStore(tmp_path / "libsofthsm2.so", token_label="t", key_label="k")
    with pytest.raises(KeyStoreUnavailable, match="hardware key store not available on this device"):
        TpmKeyStore(tmp_path / "tpmrm0")


def test_check_clock() -> None:
    now = BUILD_TIME + timedelta(days=1)
    assert check_clock(now) == now
    with pytest.raises(
        ClockNotSet, match=r"device clock is before the software build time .*sync time \(NTP\)"
    ):
        check_clock(datetime(1970, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError):
        check_clock(datetime(2030, 1, 1))
    check_clock()  # this machine's clock is synced


def test_keystore_protocol_is_structural() -> None:
    class Fake:
        def public_key(self) -> object:
            return Ed25519PrivateKey.generate().public_key()

        def sign(self, data: bytes) -> bytes:
            return b""

        def csr(self, device_id: str) -> bytes:
            return b""

        def key_pem_for_tls(self) -> bytes | None:
            return None

    assert isinstance(Fake(), KeyStore)
