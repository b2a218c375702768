"""TUF threat model: each attack against a real repository served over HTTP, seen by the device's
ReleaseClient, must be refused with a specific reason (and honest changes must be accepted)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ota_repo_helpers import Repo, served_repo
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root

from agent.ota.errors import ClockError, ReleaseNotFound, RepositoryError, TransferError
from agent.ota.tufclient import ReleaseClient
from fleet.broker import free_port
from fleet.releases import meta
from fleet.releases.keys import generate_key, load_key
from fleet.releases.repo import manifest_file, refresh_online, rotate
from protocol.clock import BUILD_TIME
from protocol.release import manifest_target

V1 = {"app/main.py": b"print('one')\n", "models/m.bin": bytes(range(256)) * 8}
V2 = {"app/main.py": b"print('two')\n", "models/m.bin": bytes(range(256)) * 8}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """A served repository with release 1.0.0 published (targets/snapshot/timestamp version 2)."""
    with served_repo(tmp_path) as served:
        served.publish("1.0.0", V1)
        yield served


def refused(client: ReleaseClient, *, target: str | None = None) -> str:
    """Refresh (and fetch ``target``'s manifest); return the RepositoryError message."""
    with pytest.raises(RepositoryError) as caught:
        client.refresh()
        if target is not None:
            client.manifest(target)
    assert caught.value.__cause__ is not None, "the python-tuf exception must stay chained"
    return str(caught.value)


def online(repo: Repo, role: str) -> CryptoSigner:
    return load_key(repo.dir / "keys" / f"{role}.pem")


def test_honest_repository_is_accepted(repo: Repo, tmp_path: Path) -> None:
    client = repo.client(tmp_path / "device")
    client.refresh()
    assert [r["version"] for r in client.releases()] == ["1.0.0"]
    manifest, raw = client.manifest(manifest_target("1.0.0"))
    assert manifest.version == "1.0.0" and {f.path for f in manifest.files} == set(V1)
    assert raw == manifest_file(repo.dir, "1.0.0", _sha(raw)).read_bytes()
    with pytest.raises(ReleaseNotFound, match="never published or it has been withdrawn"):
        client.manifest(manifest_target("9.9.9"))
    # A later run trusts the root stored in its metadata folder.
    again = ReleaseClient(repo.url, tmp_path / "device" / "metadata", tmp_path / "device" / "targets")
    again.refresh()
    assert again.manifest(manifest_target("1.0.0"))[1] == raw


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_tampered_target_is_refused(repo: Repo, tmp_path: Path) -> None:
    path = next((repo.dir / "targets" / "releases" / "1.0.0").glob("*.manifest.json"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same length, other content
    path.write_bytes(bytes(data))
    message = refused(repo.client(tmp_path / "device"), target=manifest_target("1.0.0"))
    assert "does not match its signed sha256" in message and "tampered" in message


@pytest.mark.parametrize("role", ["timestamp", "targets"])
def test_metadata_signed_with_a_wrong_key_is_refused(repo: Repo, tmp_path: Path, role: str) -> None:
    state = meta.load_state(repo.dir)
    rogue = generate_key()
    if role == "timestamp":
        meta.bump(state.timestamp, meta.utc(None), timedelta(days=1))
        meta.sign(state.timestamp, [rogue], [])
        meta.write(repo.dir, state.timestamp)
    else:
        meta.bump(state.targets, meta.utc(None), timedelta(days=1))
        meta.sign(state.targets, [rogue], [])
        meta.write(repo.dir, state.targets)
        meta.commit_snapshot(repo.dir, state, meta.utc(None))
    message = refused(repo.client(tmp_path / "device"))
    assert f"signature threshold not met for {role}: 0 of the 1 required" in message


def test_root_signed_below_threshold_of_two_is_refused(tmp_path: Path) -> None:
    with served_repo(tmp_path, root_threshold=2, root_keys=2) as repo:
        client = repo.client(tmp_path / "device")
        client.refresh()
        # Someone holding one of the two root keys adds their own targets key.
        state = meta.load_state(repo.dir)
        state.root.signed.add_key(generate_key().public_key, "targets")
        meta.bump(state.root, meta.utc(None), timedelta(days=30))
        meta.sign(state.root, [load_key(repo.root_keys[0])], [])
        meta.write(repo.dir, state.root)
        message = refused(client)
        assert "signature threshold not met for root: 1 of the 2 required" in message


def test_targets_signed_below_threshold_of_two_is_refused(tmp_path: Path) -> None:
    with served_repo(tmp_path, targets_threshold=2, targets_keys=2) as repo:
        repo.publish("1.0.0", V1)
        state = meta.load_state(repo.dir)
        del state.targets.signed.targets[manifest_target("1.0.0")]
        meta.bump(state.targets, meta.utc(None), timedelta(days=30))
        meta.sign(state.targets, [load_key(repo.targets_keys[0])], [])
        meta.write(repo.dir, state.targets)
        meta.commit_snapshot(repo.dir, state, meta.utc(None))
        message = refused(repo.client(tmp_path / "device"))
        assert "signature threshold not met for targets: 1 of the 2 required" in message


def test_rollback_to_an_older_timestamp_is_refused(repo: Repo, tmp_path: Path) -> None:
    old = (repo.dir / "metadata" / "timestamp.json").read_bytes()  # version 2
    repo.publish("1.1.0", V2)  # version 3
    client = repo.client(tmp_path / "device")
    client.refresh()
    (repo.dir / "metadata" / "timestamp.json").write_bytes(old)
    message = refused(client)
    assert "older timestamp version (2; the device already trusts version 3)" in message
    assert "rollback" in message


def test_rollback_to_an_older_snapshot_is_refused(repo: Repo, tmp_path: Path) -> None:
    repo.publish("1.1.0", V2)
    client = repo.client(tmp_path / "device")
    client.refresh()
    # With the (online) timestamp key, an attacker points a new timestamp at the old snapshot 2.
    state = meta.load_state(repo.dir)
    state.timestamp.signed.snapshot_meta = MetaFile(version=2)
    meta.bump(state.timestamp, meta.utc(None), timedelta(days=1))
    meta.sign(state.timestamp, [online(repo, "timestamp")], [])
    meta.write(repo.dir, state.timestamp)
    message = refused(client)
    assert "older snapshot version (2; the device already trusts version 3)" in message
    assert "rollback" in message


def test_rollback_to_an_older_targets_is_refused(repo: Repo, tmp_path: Path) -> None:
    repo.publish("1.1.0", V2)
    client = repo.client(tmp_path / "device")
    client.refresh()
    # With both online keys, an attacker serves a new snapshot naming the old targets 2.
    state = meta.load_state(repo.dir)
    state.snapshot.signed.meta["targets.json"] = MetaFile(version=2)
    meta.bump(state.snapshot, meta.utc(None), timedelta(days=7))
    meta.sign(state.snapshot, [online(repo, "snapshot")], [])
    meta.write(repo.dir, state.snapshot)
    meta.commit_timestamp(repo.dir, state, meta.utc(None))
    message = refused(client)
    assert "older targets version (2; the device already trusts version 3)" in message


def test_freeze_expired_timestamp_is_refused_until_resigned(repo: Repo, tmp_path: Path) -> None:
    later = datetime.now(timezone.utc) + timedelta(days=2)
    client = repo.client(tmp_path / "device", now=lambda: later)
    expires = meta.load_state(repo.dir).timestamp.signed.expires
    message = refused(client)
    assert f"the timestamp metadata expired on {expires:%Y-%m-%dT%H:%M:%S}" in message
    assert "the repository is frozen or the fleet's re-signer is not running" in message
    assert refresh_online(repo.dir, later)  # what the fleet's re-signer does
    client.refresh()
    assert client.manifest(manifest_target("1.0.0"))[0].version == "1.0.0"


def test_mix_and_match_is_refused(repo: Repo, tmp_path: Path) -> None:
    repo.publish("1.1.0", V2)
    metadata = repo.dir / "metadata"
    (metadata / "3.targets.json").write_bytes((metadata / "2.targets.json").read_bytes())
    message = refused(repo.client(tmp_path / "device"))
    assert "the snapshot names targets version 3 but the repository served version 2" in message
    assert "mix-and-match" in message


def test_endless_target_is_refused(repo: Repo, tmp_path: Path) -> None:
    path = next((repo.dir / "targets" / "releases" / "1.0.0").glob("*.manifest.json"))
    signed_length = path.stat().st_size
    path.write_bytes(path.read_bytes() + b" " * 100_000)
    message = refused(repo.client(tmp_path / "device"), target=manifest_target("1.0.0"))
    assert f"larger than its signed length of {signed_length} bytes" in message
    assert not list((tmp_path / "device" / "targets").iterdir())


def test_endless_metadata_is_refused(repo: Repo, tmp_path: Path) -> None:
    path = repo.dir / "metadata" / "timestamp.json"
    path.write_bytes(path.read_bytes() + b" " * 40_000)  # still valid JSON, far over the limit
    message = refused(repo.client(tmp_path / "device"))
    assert "the timestamp metadata" in message and "larger than allowed" in message
    assert "endless-data" in message


def test_new_targets_key_is_accepted_only_through_root(repo: Repo, tmp_path: Path) -> None:
    client = repo.client(tmp_path / "device")
    client.refresh()
    # A new targets key used without a root update: refused.
    state = meta.load_state(repo.dir)
    meta.bump(state.targets, meta.utc(None), timedelta(days=30))
    meta.sign(state.targets, [generate_key()], [])
    meta.write(repo.dir, state.targets)
    meta.commit_snapshot(repo.dir, state, meta.utc(None))
    assert "signature threshold not met for targets" in refused(client)
    # The proper way: the root keys sign a new root naming the new targets key.
    new_key = tmp_path / "offline2" / "targets-new.pem"
    rotate(repo.dir, "targets", repo.root_keys, new_key)
    for old in repo.targets_keys:
        old.unlink()
    new_key.rename(repo.offline / "targets-2.pem")
    repo.publish("1.1.0", V2)
    client.refresh()
    assert [r["version"] for r in client.releases()] == ["1.0.0", "1.1.0"]
    trusted = Metadata[Root].from_file(str(tmp_path / "device" / "metadata" / "root.json"))
    assert trusted.signed.version == 2


def test_clock_before_build_time_is_refused(repo: Repo, tmp_path: Path) -> None:
    client = repo.client(tmp_path / "device", now=lambda: BUILD_TIME - timedelta(days=3))
    with pytest.raises(ClockError, match="sync the time") as caught:
        client.refresh()
    assert caught.value.retryable


def test_unreachable_or_wrong_repository(tmp_path: Path, repo: Repo) -> None:
    nowhere = ReleaseClient(
        f"http://127.0.0.1:{free_port()}/tuf/", tmp_path / "a" / "md", tmp_path / "a" / "t", repo.first_root,
        timeout_s=2,
    )  # fmt: skip
    with pytest.raises(TransferError, match="cannot reach the release repository"):
        nowhere.refresh()
    wrong = ReleaseClient(repo.url + "nothing/", tmp_path / "b" / "md", tmp_path / "b" / "t", repo.first_root)
    with pytest.raises(RepositoryError, match=r"check ota\.repository_url"):
        wrong.refresh()
    untrusting = ReleaseClient(repo.url, tmp_path / "c" / "md", tmp_path / "c" / "t")
    with pytest.raises(RepositoryError, match="no trusted TUF root"):
        untrusting.refresh()
    forged = repo.first_root.replace(b'"version": 1', b'"version": 7')
    with pytest.raises(RepositoryError, match="trusted TUF root given at provisioning is not valid"):
        ReleaseClient(repo.url, tmp_path / "d" / "md", tmp_path / "d" / "t", forged).refresh()
