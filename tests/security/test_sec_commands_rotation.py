"""Fleet key rotation without re-flashing: root-signed key lists, on the device and with the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from agent.truststore import TrustStore, TrustStoreError
from agent.verify import SignatureRejected, TrustRejected, build_verifier
from fleet.keys_cli import init_keys, register_keys, rotate_keys
from fleet.signer import Ed25519Signer, KeyRingError, load_fleet_signer, load_keyring
from protocol.trust import (
    FleetKey,
    KeyListNotNewer,
    KeyListRejected,
    RootKey,
    build_key_list,
    key_id,
    sign_key_list,
)

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
ROOT = Ed25519PrivateKey.generate()


def kid(key: Ed25519PrivateKey) -> str:
    return key_id("fleet", key.public_key())


def key_list(
    version: int, keys: list[Ed25519PrivateKey], signer: Ed25519PrivateKey = ROOT, days: int = 365
) -> Any:
    entries = [FleetKey(kid(k), k.public_key(), None) for k in keys]
    return sign_key_list(build_key_list(version, NOW + timedelta(days=days), entries), signer)


def command(key: Ed25519PrivateKey, name: str = "ping") -> dict[str, Any]:
    return Ed25519Signer(key, kid(key), clock=lambda: NOW).sign({"id": f"c-{name}", "name": name, "args": {}})


@pytest.fixture
def old_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path, old_key: Ed25519PrivateKey) -> TrustStore:
    return TrustStore.install(tmp_path / "trust", RootKey.from_private(ROOT), key_list(1, [old_key]), NOW)


def test_root_signed_newer_list_replaces_the_keys(
    tmp_path: Path, store: TrustStore, old_key: Ed25519PrivateKey
) -> None:
    new_key = Ed25519PrivateKey.generate()
    assert store.apply(key_list(2, [new_key]), NOW)
    assert set(store.command_keys(NOW)) == {kid(new_key)}
    reloaded = TrustStore.load(tmp_path / "trust")  # persisted: survives a restart
    assert reloaded.version == 2
    verifier = build_verifier(tmp_path, clock=lambda: NOW)
    verifier.verify(command(new_key))
    with pytest.raises(SignatureRejected, match="unknown signing key"):
        verifier.verify(command(old_key, "reboot"))  # the old key stopped working


def test_list_signed_by_a_fleet_key_is_refused(store: TrustStore, old_key: Ed25519PrivateKey) -> None:
    attacker = Ed25519PrivateKey.generate()
    with pytest.raises(KeyListRejected, match="not signed by the fleet root key"):
        store.apply(key_list(2, [attacker], signer=old_key), NOW)
    assert store.version == 1


def test_older_or_same_version_is_refused(store: TrustStore, old_key: Ed25519PrivateKey) -> None:
    assert not store.apply(store.key_list.document, NOW)  # the list in use: no change
    with pytest.raises(KeyListNotNewer, match="version 1 is not newer than the current version 1"):
        store.apply(key_list(1, [Ed25519PrivateKey.generate()]), NOW)
    store.apply(key_list(5, [old_key]), NOW)
    with pytest.raises(KeyListNotNewer, match="version 4 is not newer"):
        store.apply(key_list(4, [old_key]), NOW)


def test_expired_list_is_refused(store: TrustStore) -> None:
    with pytest.raises(KeyListRejected, match="expired at"):
        store.apply(key_list(2, [Ed25519PrivateKey.generate()], days=-1), NOW)
    assert store.version == 1


def test_key_past_its_not_after_is_not_used(tmp_path: Path) -> None:
    retiring, fresh = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    entries = [
        FleetKey(kid(retiring), retiring.public_key(), NOW + timedelta(hours=1)),
        FleetKey(kid(fresh), fresh.public_key(), None),
    ]
    doc = sign_key_list(build_key_list(1, NOW + timedelta(days=30), entries), ROOT)
    store = TrustStore.install(tmp_path / "t", RootKey.from_private(ROOT), doc, NOW)
    assert set(store.command_keys(NOW)) == {kid(retiring), kid(fresh)}
    assert set(store.command_keys(NOW + timedelta(hours=2))) == {kid(fresh)}


def test_tampered_trust_file_is_detected_at_load(tmp_path: Path, store: TrustStore) -> None:
    path = tmp_path / "trust" / "fleet_keys.json"
    path.write_text(path.read_text().replace('"version": 1', '"version": 9'))
    with pytest.raises(TrustStoreError, match="not valid"):
        TrustStore.load(tmp_path / "trust")


def test_rotation_travels_in_the_desired_state(
    tmp_path: Path, store: TrustStore, old_key: Ed25519PrivateKey
) -> None:
    new_key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(new_key, kid(new_key), key_list=key_list(2, [new_key]), clock=lambda: NOW)
    desired = signer.sign({"version": 7, "config": {}, "release": None})
    assert desired["trust"]["version"] == 2
    verifier = build_verifier(tmp_path, clock=lambda: NOW)
    verifier.verify(desired)  # new list taken first, then the outer signature by the new key verifies
    assert TrustStore.load(tmp_path / "trust").version == 2
    with pytest.raises(SignatureRejected):
        verifier.verify(command(old_key))


def test_desired_state_with_a_forged_trust_list_is_refused(
    tmp_path: Path, store: TrustStore, old_key: Ed25519PrivateKey
) -> None:
    attacker = Ed25519PrivateKey.generate()
    forged = key_list(2, [attacker], signer=attacker)
    desired = Ed25519Signer(attacker, kid(attacker), key_list=forged, clock=lambda: NOW).sign(
        {"version": 1, "config": {}, "release": None}
    )
    with pytest.raises(TrustRejected, match="fleet key list refused"):
        build_verifier(tmp_path, clock=lambda: NOW).verify(desired)
    assert TrustStore.load(tmp_path / "trust").version == 1


def test_fleet_keys_init_and_rotate(tmp_path: Path) -> None:
    fleet_dir, root_file = tmp_path / "fleet", tmp_path / "usb" / "root.pem"
    first = init_keys(fleet_dir, root_file)
    assert root_file.stat().st_mode & 0o777 == 0o600
    assert not any(p.name == "root.pem" for p in fleet_dir.rglob("*"))  # the root stays offline
    device = tmp_path / "device"
    ring = load_keyring(fleet_dir)
    TrustStore.install(device / "trust", ring.root, first, datetime.now(timezone.utc))
    signer = load_fleet_signer(fleet_dir)
    build_verifier(device).verify(signer.sign({"id": "c1", "name": "ping", "args": {}}))

    second = rotate_keys(fleet_dir, root_file)
    assert second["version"] == 2 and len(second["keys"]) == 2  # old key kept for the overlap
    new_signer = load_fleet_signer(fleet_dir)
    assert new_signer.kid != signer.kid
    verifier = build_verifier(device)
    verifier.verify(new_signer.sign({"version": 1, "config": {}, "release": None}))
    verifier.verify(new_signer.sign({"id": "c2", "name": "ping", "args": {}}))

    third = rotate_keys(fleet_dir, root_file, retire_old=True)
    assert [k["kid"] for k in third["keys"]] == [load_keyring(fleet_dir).active_kid]
    verifier.verify(load_fleet_signer(fleet_dir).sign({"version": 2, "config": {}, "release": None}))
    with pytest.raises(SignatureRejected, match="unknown signing key"):
        verifier.verify(new_signer.sign({"id": "c3", "name": "ping", "args": {}}))


def test_rotate_refuses_a_key_that_is_not_the_root(tmp_path: Path) -> None:
    init_keys(tmp_path / "fleet", tmp_path / "root.pem")
    other = tmp_path / "other.pem"
    init_keys(tmp_path / "fleet2", other)
    with pytest.raises(KeyRingError, match="is not the fleet root key"):
        rotate_keys(tmp_path / "fleet", other)


def test_keys_cli(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    fleet = typer.Typer()
    register_keys(fleet)
    app.add_typer(fleet, name="fleet")
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "fleet")]
    res = runner.invoke(app, ["fleet", "keys", "init", "--root-out", str(tmp_path / "root.pem"), *data])
    assert res.exit_code == 0, res.output
    assert "move it offline" in res.output
    res = runner.invoke(app, ["fleet", "keys", "rotate", "--root-key", str(tmp_path / "root.pem"), *data])
    assert res.exit_code == 0, res.output
    assert "key list version 2" in res.output
    res = runner.invoke(app, ["fleet", "keys", "show", "--json", *data])
    assert res.exit_code == 0 and '"version": 2' in res.output
    res = runner.invoke(app, ["fleet", "keys", "rotate", "--root-key", str(tmp_path / "nope.pem"), *data])
    assert res.exit_code == 1 and "does not exist" in res.output
