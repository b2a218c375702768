"""The release repository: layout, publish/withdraw/rotate, online re-signing, HTTP serving, CLI."""

from __future__ import annotations

import hashlib
import http.client
import json
import stat
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ota_repo_helpers import Repo, make_repo, serve_app, served_repo, wait_for
from tuf.api.metadata import Metadata, Root
from typer.testing import CliRunner

from fleet.releases import meta
from fleet.releases.errors import (
    ConflictError,
    NotFound,
    RepositoryError,
    SigningKeyError,
    ThresholdError,
)
from fleet.releases.repo import (
    list_releases,
    manifest_file,
    publish,
    refresh_online,
    resign,
    rotate,
    status,
    withdraw,
)
from fleet.releases.serve import TimestampResigner

V1 = {"app/main.py": b"one\n", "shared/big.bin": bytes(range(256)) * 64}
V2 = {"app/main.py": b"two\n", "shared/big.bin": bytes(range(256)) * 64}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify_chain(repo: Path) -> meta.State:
    """Every current role verifies against the newest root, as a client would check it."""
    state = meta.load_state(repo)
    root = state.root.signed
    for md in (state.root, state.targets, state.snapshot, state.timestamp):
        root.verify_delegate(md.signed.type, md.signed_bytes, md.signatures)
    return state


def test_init_layout_and_key_placement(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert files_under(repo.dir) == {
        "metadata/1.root.json", "metadata/root.json", "metadata/1.targets.json", "metadata/1.snapshot.json",
        "metadata/timestamp.json", "keys/snapshot.pem", "keys/timestamp.pem", "repository.json",
    }  # fmt: skip
    assert files_under(repo.offline) == {"root-1.pem", "targets-1.pem"}
    for key in [*repo.offline.iterdir(), *(repo.dir / "keys").iterdir()]:
        assert mode(key) == 0o600
    assert mode(repo.dir / "keys") == 0o700
    root = Metadata[Root].from_file(str(repo.dir / "metadata" / "1.root.json")).signed
    assert root.consistent_snapshot
    state = verify_chain(repo.dir)
    assert (state.root.signed.expires - state.timestamp.signed.expires) > timedelta(days=300)
    with pytest.raises(RepositoryError, match="already holds a repository"):
        make_repo(tmp_path)
    with pytest.raises(RepositoryError, match="inside the repository"):
        _init_inside(tmp_path / "inside")
    with pytest.raises(RepositoryError, match="threshold must be between 1"):
        make_repo(tmp_path / "t", root_threshold=3, root_keys=2)


def _init_inside(base: Path) -> None:
    from fleet.releases.repo import init_repo

    init_repo(base / "repo", base / "repo" / "offline")


def test_publish_layout_idempotence_and_conflicts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    bundle = repo.bundle("1.0.0", V1)
    first = publish(repo.dir, bundle, repo.targets_keys)
    assert first["changed"] and first["objects_copied"] == 2
    raw = manifest_file(repo.dir, "1.0.0", first["sha256"]).read_bytes()
    assert sha(raw) == first["sha256"]
    expected = {
        "metadata/2.targets.json", "metadata/2.snapshot.json",
        f"targets/releases/1.0.0/{first['sha256']}.manifest.json",
        *(f"targets/objects/{sha(c)}" for c in V1.values()),
    }  # fmt: skip
    assert expected <= files_under(repo.dir)
    state = verify_chain(repo.dir)
    assert (state.targets.signed.version, state.snapshot.signed.version, state.timestamp.signed.version) == (
        2,
        2,
        2,
    )
    target = state.targets.signed.targets["releases/1.0.0/manifest.json"]
    assert target.custom == {
        "version": "1.0.0", "build_time": target.custom["build_time"], "total_bytes": 4 + 16384, "files": 2,
    }  # fmt: skip
    # The same bundle again: nothing changes.
    assert publish(repo.dir, bundle, repo.targets_keys)["changed"] is False
    assert meta.load_state(repo.dir).timestamp.signed.version == 2
    # The same version rebuilt with other content: refused.
    with pytest.raises(ConflictError, match="already published with other content"):
        publish(repo.dir, repo.bundle("1.0.0", V1, notes="rebuilt"), repo.targets_keys)
    # A second release shares the unchanged object.
    second = repo.publish("1.1.0", V2)
    assert len(list((repo.dir / "targets" / "objects").iterdir())) == 3
    assert [r["version"] for r in list_releases(repo.dir)] == ["1.0.0", "1.1.0"]
    assert list_releases(repo.dir)[1]["build_time"] == second.build_time


def test_withdraw_and_never_reuse_a_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    repo.publish("1.0.0", V1)
    repo.publish("1.1.0", V2)
    with pytest.raises(SigningKeyError, match="is not a targets key"):
        withdraw(repo.dir, "1.1.0", repo.root_keys)
    result = withdraw(repo.dir, "1.1.0", repo.targets_keys)
    assert result["targets_version"] == 4
    assert [r["version"] for r in list_releases(repo.dir)] == ["1.0.0"]
    verify_chain(repo.dir)
    with pytest.raises(NotFound, match="not published"):
        withdraw(repo.dir, "1.1.0", repo.targets_keys)
    with pytest.raises(ConflictError, match="never reused"):
        repo.publish("1.1.0", {"app/main.py": b"fixed\n"})


def test_targets_threshold_of_two(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, targets_threshold=2, targets_keys=3)
    bundle = repo.bundle("1.0.0", V1)
    with pytest.raises(ThresholdError, match="needs 2 of its 3 keys"):
        publish(repo.dir, bundle, repo.targets_keys[:1])
    with pytest.raises(ThresholdError):
        publish(repo.dir, bundle, [repo.targets_keys[0], repo.targets_keys[0]])  # one key twice counts once
    assert publish(repo.dir, bundle, repo.targets_keys[1:])["changed"]
    verify_chain(repo.dir)


def test_rotate_targets_root_and_online_keys(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    repo.publish("1.0.0", V1)
    old_targets = repo.targets_keys
    new_targets = tmp_path / "stick2" / "targets.pem"
    result = rotate(repo.dir, "targets", repo.root_keys, new_targets)
    assert result["root_version"] == 2 and mode(new_targets) == 0o600
    assert (repo.dir / "metadata" / "2.root.json").read_bytes() == (
        repo.dir / "metadata" / "root.json"
    ).read_bytes()
    with pytest.raises(SigningKeyError, match="is not a targets key"):
        publish(repo.dir, repo.bundle("1.1.0", V2), old_targets)
    publish(repo.dir, tmp_path / "work" / "1.1.0.tar", [new_targets])
    verify_chain(repo.dir)
    # Root: the new root is signed by the old and the new root key.
    old_root = meta.load_state(repo.dir).root.signed
    new_root_key = tmp_path / "stick2" / "root.pem"
    rotate(repo.dir, "root", repo.root_keys, new_root_key)
    new_root = Metadata[Root].from_file(str(repo.dir / "metadata" / "3.root.json"))
    old_root.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    with pytest.raises(SigningKeyError, match="is not a root key"):
        resign(repo.dir, "root", repo.root_keys)
    assert resign(repo.dir, "root", [new_root_key])["version"] == 4
    # Online keys are replaced in the repository's key folder.
    before = (repo.dir / "keys" / "timestamp.pem").read_bytes()
    rotate(repo.dir, "timestamp", [new_root_key])
    assert (repo.dir / "keys" / "timestamp.pem").read_bytes() != before
    assert refresh_online(repo.dir, meta.utc(None) + timedelta(hours=23))
    verify_chain(repo.dir)
    with pytest.raises(RepositoryError, match="inside the repository"):
        rotate(repo.dir, "targets", [new_root_key], repo.dir / "targets.pem")


def test_rotate_with_root_threshold_two(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, root_threshold=2, root_keys=3)
    with pytest.raises(RepositoryError, match="has 3 keys: say which one"):
        rotate(repo.dir, "root", repo.root_keys[:2], tmp_path / "new" / "r.pem")
    keyids = status(repo.dir)["root"]["keyids"]
    with pytest.raises(ThresholdError, match="needs 2 of its 3 keys"):
        rotate(repo.dir, "root", repo.root_keys[:1], tmp_path / "new" / "r.pem", retire=keyids[0][:10])
    assert not (tmp_path / "new" / "r.pem").exists()  # nothing written when refused
    rotate(repo.dir, "root", repo.root_keys[:2], tmp_path / "new" / "r.pem", retire=keyids[2][:10])
    after = status(repo.dir)["root"]
    assert after["version"] == 2 and keyids[2] not in after["keyids"] and len(after["keyids"]) == 3
    verify_chain(repo.dir)


def test_refresh_online_bumps_expiring_timestamp_and_snapshot(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, expiry=meta.Expiry(timestamp=timedelta(hours=1), snapshot=timedelta(days=2)))
    start = meta.utc(None)
    assert not refresh_online(repo.dir, start)  # 1 h left, margin 30 min
    assert refresh_online(repo.dir, start + timedelta(minutes=45))
    state = verify_chain(repo.dir)
    assert state.timestamp.signed.version == 2 and state.snapshot.signed.version == 1
    assert state.timestamp.signed.expires == start + timedelta(minutes=105)
    assert not refresh_online(repo.dir, start + timedelta(minutes=50))
    # 1 h of snapshot left: it would expire before a new timestamp (1 h + 30 min margin) does.
    assert refresh_online(repo.dir, start + timedelta(hours=47))
    state = verify_chain(repo.dir)
    assert state.snapshot.signed.version == 2 and state.timestamp.signed.version == 3


def test_resigner_thread_keeps_the_timestamp_fresh(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, expiry=meta.Expiry(timestamp=timedelta(minutes=10)))
    clock = [meta.utc(None)]
    resigner = TimestampResigner(repo.dir, interval_s=0.02, now=lambda: clock[0])
    resigner.start()
    try:
        clock[0] += timedelta(minutes=8)  # 2 min left: inside the 5 min margin
        wait_for(
            lambda: meta.load_state(repo.dir).timestamp.signed.version >= 2, what="a re-signed timestamp"
        )
        assert meta.load_state(repo.dir).timestamp.signed.expires == clock[0] + timedelta(minutes=10)
    finally:
        resigner.stop()
    assert resigner.resigned >= 1 and resigner.last_error is None


# --- HTTP --------------------------------------------------------------------------------------


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of '..')."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path: Path) -> Any:
    with served_repo(tmp_path) as repo:
        repo.publish("1.0.0", V1)
        yield repo


def test_range_requests_on_objects(served: Repo) -> None:
    content = V1["shared/big.bin"]
    path = f"/tuf/targets/objects/{sha(content)}"
    status_code, headers, body = raw_get(served.url, path, {"Range": "bytes=1000-"})
    assert status_code == 206 and body == content[1000:]
    assert headers["content-range"] == f"bytes 1000-{len(content) - 1}/{len(content)}"
    status_code, headers, body = raw_get(served.url, path, {"Range": "bytes=10-19"})
    assert (status_code, body) == (206, content[10:20])
    status_code, headers, body = raw_get(served.url, path)
    assert status_code == 200 and body == content and headers["accept-ranges"] == "bytes"
    status_code, headers, _ = raw_get(served.url, path, {"Range": f"bytes={len(content)}-"})
    assert status_code == 416 and headers["content-range"] == f"bytes */{len(content)}"
    request = urllib.request.Request(served.url + f"targets/objects/{sha(content)}", method="HEAD")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200 and int(response.headers["content-length"]) == len(content)


def test_timestamp_caching_headers(served: Repo) -> None:
    status_code, headers, body = raw_get(served.url, "/tuf/metadata/timestamp.json")
    assert status_code == 200 and headers["cache-control"] == "no-cache"
    head = urllib.request.Request(served.url + "metadata/timestamp.json", method="HEAD")
    with urllib.request.urlopen(head) as response:
        assert response.read() == b"" and int(response.headers["content-length"]) == len(body)
        assert response.headers["etag"] == headers["etag"]
    assert body == (served.dir / "metadata" / "timestamp.json").read_bytes()
    assert raw_get(served.url, "/tuf/metadata/timestamp.json", {"If-None-Match": headers["etag"]})[0] == 304
    refresh_online(served.dir, meta.utc(None) + timedelta(hours=20))
    status_code, changed, _ = raw_get(
        served.url, "/tuf/metadata/timestamp.json", {"If-None-Match": headers["etag"]}
    )
    assert status_code == 200 and changed["etag"] != headers["etag"]
    assert "immutable" in raw_get(served.url, "/tuf/metadata/2.snapshot.json")[1]["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/tuf/keys/timestamp.pem",
        "/tuf/metadata/../keys/timestamp.pem",
        "/tuf/targets/../keys/timestamp.pem",
        "/tuf/targets/%2e%2e/keys/timestamp.pem",
        "/tuf/targets/..%2fkeys%2ftimestamp.pem",
        "/tuf/targets/%2E%2E/repository.json",
        "/tuf/metadata/repository.json",
        "/tuf/metadata/%2e%2e%2fkeys%2fsnapshot.pem",
        "/tuf/targets/objects",
        "/tuf/targets/",
    ],
)
def test_keys_and_other_files_are_not_served(served: Repo, path: str) -> None:
    status_code, _, body = raw_get(served.url, path)
    assert status_code == 404, (path, body[:200])
    assert b"PRIVATE KEY" not in body


def test_symlink_out_of_targets_is_not_followed(served: Repo) -> None:
    (served.dir / "targets" / "leak").symlink_to(served.dir / "keys" / "timestamp.pem")
    assert raw_get(served.url, "/tuf/targets/leak")[0] == 404


def test_fleet_serve_mounts_the_repository(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from fleet.config import FleetConfigError
    from fleet.serve import build_releases

    with pytest.raises(FleetConfigError, match="not a release repository"):
        build_releases(tmp_path / "nothing")
    repo = make_repo(tmp_path)
    router, resigner = build_releases(repo.dir)
    assert isinstance(resigner, TimestampResigner)
    app = FastAPI()
    app.include_router(router)
    with serve_app(app) as base:
        assert raw_get(base, "/tuf/metadata/1.root.json")[0] == 200
        assert raw_get(base, "/tuf/metadata/../keys/timestamp.pem")[0] == 404


# --- command line ------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path) -> None:
    from cityedge.cli import build_app

    app = build_app()
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, ["release", *args])
        assert result.exit_code == code, (args, result.output)
        return result

    repo, offline = tmp_path / "repo", tmp_path / "usb"
    init = json.loads(
        run("keys", "init", "--repo", str(repo), "--offline-keys", str(offline), "--json").stdout
    )
    assert init["keys"]["targets"] == [str(offline / "targets-1.pem")]
    (tmp_path / "hello.txt").write_text("hello")
    built = run(
        "build", "--version", "1.0.0", "--no-project-wheel", "--json",
        "--file", f"app/hello.txt={tmp_path / 'hello.txt'}", "--out", str(tmp_path / "r.tar"),
    )  # fmt: skip
    assert json.loads(built.stdout)["files"] == 1
    run(
        "publish",
        "--repo",
        str(repo),
        "--targets-key",
        str(offline / "targets-1.pem"),
        str(tmp_path / "r.tar"),
    )
    rows = json.loads(run("list", "--repo", str(repo), "--json").stdout)
    assert [r["version"] for r in rows] == ["1.0.0"]
    assert "1.0.0" in run("list", "--repo", str(repo)).stdout
    assert json.loads(run("status", "--repo", str(repo), "--json").stdout)["targets"]["version"] == 2
    again = run(
        "publish",
        "--repo",
        str(repo),
        "--targets-key",
        str(offline / "targets-1.pem"),
        str(tmp_path / "r.tar"),
    )
    assert "nothing changed" in again.stdout
    bad = run("withdraw", "--repo", str(repo), "--targets-key", str(offline / "root-1.pem"), "1.0.0", code=1)
    assert "error: " in bad.output and "is not a targets key" in bad.output
    run("keys", "rotate", "--repo", str(repo), "--role", "targets", "--root-key", str(offline / "root-1.pem"),
        "--out", str(offline / "targets-2.pem"))  # fmt: skip
    run("withdraw", "--repo", str(repo), "--targets-key", str(offline / "targets-2.pem"), "1.0.0")
    assert json.loads(run("list", "--repo", str(repo), "--json").stdout) == []
    missing = run("list", "--repo", str(tmp_path / "nope"), code=1)
    assert "error: " in missing.output and "not a release repository" in missing.output
