"""The A/B slot installer on real files: staging and reuse, wheels, verify, the running slot is never
written, a full disk (checked before, and a real ENOSPC on a small tmpfs)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ota_objserver import mounted_tmpfs, object_server

from agent.ota.errors import DiskFull, InstallError, IntegrityError
from agent.ota.fetch import ObjectFetcher
from agent.ota.slots import SlotInstaller, check_layout
from protocol.atomic import atomic_symlink
from protocol.release import MANIFEST_FILE, ReleaseFile, ReleaseManifest

Files = dict[str, bytes | tuple[bytes, int]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(version: str, files: Mapping[str, bytes | tuple[bytes, int]]) -> tuple[ReleaseManifest, bytes]:
    entries = []
    for path, value in sorted(files.items()):
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        entries.append(ReleaseFile(path=path, sha256=sha(data), length=len(data), mode=mode))
    manifest = ReleaseManifest(version=version, build_time="2025-01-01T00:00:00Z", files=entries)
    return manifest, manifest.to_json()


def contents(files: Mapping[str, bytes | tuple[bytes, int]]) -> dict[str, bytes]:
    return {p: v[0] if isinstance(v, tuple) else v for p, v in files.items()}


def stage(installer: SlotInstaller, files: Mapping[str, bytes | tuple[bytes, int]]) -> None:
    for data in contents(files).values():
        path = installer.staged_object(sha(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def install_and_commit(installer: SlotInstaller, version: str, files: Files) -> Path:
    manifest, raw = release(version, files)
    stage(installer, files)
    slot = installer.install(manifest, raw)
    atomic_symlink(f"slots/{slot.name}", installer.current_link)
    installer.discard_staging()
    return slot


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def make_wheel(name: str, modules: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A real (tiny) wheel: modules under NAME/, dist-info with a hashed RECORD, extra members as given."""
    dist = f"{name}-1.0.dist-info"
    members = {f"{name}/{mod}": data for mod, data in modules.items()}
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    members[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members.update(extra or {})
    record = []
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return buffer.getvalue()


BASE: Files = {
    "bin/run": (b"#!/bin/sh\necho run\n", 0o755),
    "config/defaults.toml": b"[agent]\nname = 'x'\n",
    "models/detector.onnx": random.Random(1).randbytes(300_000),
    "firmware/io.bin": random.Random(2).randbytes(50_000),
}


def test_install_from_staging(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    manifest, raw = release("1.0.0", BASE)
    assert installer.missing_objects(manifest) == manifest.objects()
    stage(installer, BASE)
    assert installer.missing_objects(manifest) == {}
    assert installer.running_slot() is None
    slot = installer.install(manifest, raw)
    assert slot == tmp_path / "root" / "slots" / "a"
    for path, data in contents(BASE).items():
        assert (slot / path).read_bytes() == data
    assert os.stat(slot / "bin/run").st_mode & 0o777 == 0o755
    assert os.stat(slot / "config/defaults.toml").st_mode & 0o777 == 0o644
    assert (slot / MANIFEST_FILE).read_bytes() == raw
    assert installer.verify(slot) == manifest
    assert installer.slot_manifest(slot) == manifest
    assert installer.slot_manifest(installer.slot_path("b")) is None


def test_objects_in_the_running_slot_are_not_downloaded(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    running = install_and_commit(installer, "1.0.0", BASE)
    assert installer.running_slot() == running and installer.inactive_slot().name == "b"
    new_model = random.Random(3).randbytes(200_000)
    files2 = {**BASE, "models/detector.onnx": new_model, "config/site.toml": BASE["config/defaults.toml"]}
    manifest, raw = release("1.1.0", files2)
    missing = installer.missing_objects(manifest)
    assert missing == {sha(new_model): len(new_model)}
    with object_server(tmp_path / "repo") as server:
        server.put(new_model)
        for other in contents(BASE).values():  # the repository has everything; only one is asked for
            server.put(other)
        fetcher = ObjectFetcher(server.base_url, timeout_s=5, retries=0)
        downloaded = sum(fetcher.fetch(s, n, installer.staged_object(s)) for s, n in missing.items())
        assert downloaded == len(new_model)
        assert [seen.path.rsplit("/", 1)[-1] for seen in server.seen] == [sha(new_model)]
    slot = installer.install(manifest, raw)
    assert slot.name == "b"
    assert (slot / "config/site.toml").read_bytes() == BASE["config/defaults.toml"]
    assert installer.verify(slot) == manifest
    assert installer.verify(running).version == "1.0.0"  # the running slot is untouched


def test_wheels_are_unpacked_into_site(tmp_path: Path) -> None:
    wheel = make_wheel(
        "demo",
        {"__init__.py": b"VALUE = 42\n", "mod.py": b"def hello():\n    return 'hi'\n"},
        {
            "demo-1.0.data/purelib/demo_extra.py": b"EXTRA = 1\n",
            "demo-1.0.data/scripts/demo-tool": b"#!python\nprint('tool')\n",
        },
    )
    files: Files = {**BASE, "wheels/demo-1.0-py3-none-any.whl": wheel}
    installer = SlotInstaller(tmp_path / "root")
    manifest, raw = release("1.0.0", files)
    stage(installer, files)
    slot = installer.install(manifest, raw)
    site = slot / "site"
    assert sorted(p.name for p in site.iterdir()) == ["demo", "demo-1.0.dist-info", "demo_extra.py"]
    assert not list(site.rglob("demo-tool"))  # scripts are not installed
    code = "import demo, demo.mod, demo_extra; print(demo.VALUE, demo.mod.hello(), demo_extra.EXTRA)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["42", "hi", "1"]
    # A flipped byte in an unpacked file is found through the wheel's RECORD.
    target = site / "demo" / "mod.py"
    data = bytearray(target.read_bytes())
    data[5] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"demo/mod\.py does not match wheel"):
        installer.verify(slot)


def test_wheel_member_escaping_site_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel("evil", {"__init__.py": b""}, {"../../escaped.py": b"print('owned')\n"})
    files: Files = {**BASE, "wheels/evil-1.0-py3-none-any.whl": wheel}
    installer = SlotInstaller(tmp_path / "root")
    manifest, raw = release("1.0.0", files)
    stage(installer, files)
    with pytest.raises(InstallError, match="outside site/"):
        installer.install(manifest, raw)
    assert not list(tmp_path.rglob("escaped.py"))
    slot = installer.slot_path("a")
    assert not (slot / MANIFEST_FILE).exists() and tree(slot) == []
    assert installer.missing_objects(manifest) == {}  # staging kept


def test_wheels_sharing_a_file(tmp_path: Path) -> None:
    shared = {"ns/__init__.py": b"# namespace\n"}
    one = make_wheel("one", {"a.py": b"A = 1\n"}, shared)
    two = make_wheel("two", {"b.py": b"B = 2\n"}, shared)
    installer = SlotInstaller(tmp_path / "root")
    files: Files = {"wheels/one-1.0-py3-none-any.whl": one, "wheels/two-1.0-py3-none-any.whl": two}
    stage(installer, files)
    slot = installer.install(*release("1.0.0", files))  # identical content: written once
    assert (slot / "site/ns/__init__.py").read_bytes() == b"# namespace\n"
    clash = make_wheel("three", {"c.py": b""}, {"ns/__init__.py": b"# other\n"})
    files = {**files, "wheels/three-1.0-py3-none-any.whl": clash}
    stage(installer, files)
    atomic_symlink("slots/a", installer.current_link)
    with pytest.raises(InstallError, match=r"both install site/ns/__init__\.py with different content"):
        installer.install(*release("1.0.1", files))
    assert tree(installer.slot_path("b")) == []


def test_verify_finds_a_flipped_byte_a_changed_mode_and_an_incomplete_slot(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    slot = install_and_commit(installer, "1.0.0", BASE)
    model = slot / "models/detector.onnx"
    original = model.read_bytes()
    flipped = bytearray(original)
    flipped[123_456] ^= 0x80
    model.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match=r"detector\.onnx does not match release 1\.0\.0"):
        installer.verify(slot)
    model.write_bytes(original)
    installer.verify(slot)
    os.chmod(slot / "bin/run", 0o777)
    with pytest.raises(IntegrityError, match=r"has mode 777 but release 1\.0\.0 lists 755"):
        installer.verify(slot)
    os.chmod(slot / "bin/run", 0o755)
    (slot / "firmware/io.bin").unlink()
    (slot / "firmware/io.bin").symlink_to("/etc/hostname")
    with pytest.raises(IntegrityError, match="missing or not a plain file"):
        installer.verify(slot)
    with pytest.raises(InstallError, match=r"has no manifest\.json"):
        installer.verify(installer.slot_path("b"))


def test_the_running_slot_is_never_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    committed = install_and_commit(SlotInstaller(root), "1.0.0", BASE)  # current -> slots/a
    pending_manifest, pending_raw = release("1.1.0", {**BASE, "notes.txt": b"1.1"})
    stage(SlotInstaller(root), {**BASE, "notes.txt": b"1.1"})
    pending = SlotInstaller(root).install(pending_manifest, pending_raw)  # into b
    assert (committed.name, pending.name) == ("a", "b")
    before = {p: p.read_bytes() for p in pending.rglob("*") if p.is_file()}
    # The launcher runs b on trial (not committed): a holds the rollback, b runs. No slot is free.
    on_trial = SlotInstaller(root, environ={"CITYEDGE_SLOT": "b"})
    assert on_trial.running_slot() == pending and on_trial.committed_slot() == committed
    with pytest.raises(InstallError, match="both slots are in use"):
        on_trial.inactive_slot()
    manifest, raw = release("1.2.0", {**BASE, "notes.txt": b"1.2"})
    stage(on_trial, {**BASE, "notes.txt": b"1.2"})
    with pytest.raises(InstallError, match="both slots are in use"):
        on_trial.install(manifest, raw)
    assert {p: p.read_bytes() for p in pending.rglob("*") if p.is_file()} == before
    # The slot may also be given as a path; an unknown value is refused rather than guessed.
    assert SlotInstaller(root, environ={"CITYEDGE_SLOT": str(pending)}).running_slot() == pending
    with pytest.raises(InstallError, match="does not name slot a or b"):
        SlotInstaller(root, environ={"CITYEDGE_SLOT": "/opt/elsewhere"}).inactive_slot()
    # Committed b: a is the one to write.
    atomic_symlink("slots/b", root / "current")
    assert SlotInstaller(root, environ={"CITYEDGE_SLOT": "b"}).inactive_slot() == committed


def test_a_shared_staged_object_never_changes_mode_in_another_slot(tmp_path: Path) -> None:
    """Staged objects are hard-linked into the slot; a later release that wants another mode for
    the same content must get its own copy, or the chmod would reach the running slot's file."""
    root = tmp_path / "root"
    tool = b"#!/bin/sh\necho tool\n"
    first = SlotInstaller(root)
    stage(first, {"tool": tool})
    manifest, raw = release("1.0.0", {"tool": (tool, 0o644)})
    running = first.install(manifest, raw)
    atomic_symlink("slots/a", root / "current")
    # staging still holds the object (linked to slots/a/tool)
    manifest2, raw2 = release("1.1.0", {"tool": (tool, 0o755), "tool2": (tool, 0o755)})
    slot = first.install(manifest2, raw2)
    assert os.stat(running / "tool").st_mode & 0o777 == 0o644
    assert os.stat(slot / "tool").st_mode & 0o777 == 0o755
    assert os.stat(slot / "tool").st_ino != os.stat(running / "tool").st_ino
    first.verify(running)
    first.verify(slot)


def test_damaged_staged_object_is_deleted_and_asked_for_again(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    manifest, raw = release("1.0.0", BASE)
    stage(installer, BASE)
    victim = installer.staged_object(sha(contents(BASE)["firmware/io.bin"]))
    damaged = bytearray(victim.read_bytes())
    damaged[0] ^= 0xFF
    victim.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError, match="was damaged on disk and was deleted"):
        installer.install(manifest, raw)
    assert not victim.exists()
    assert installer.missing_objects(manifest) == {victim.name: len(damaged)}
    assert tree(installer.slot_path("a")) == []


def test_reserved_and_clashing_paths_are_refused(tmp_path: Path) -> None:
    for files in ({"manifest.json": b"{}"}, {"site/x.py": b""}, {"lib": b"x", "lib/a.py": b"y"}):
        manifest, raw = release("1.0.0", files)
        with pytest.raises(InstallError, match="rebuild the release"):
            check_layout(manifest)
        installer = SlotInstaller(tmp_path / "root")
        stage(installer, files)
        with pytest.raises(InstallError):
            installer.install(manifest, raw)
        assert not installer.slot_path("a").exists()


def test_manifest_bytes_must_match(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    manifest, _ = release("1.0.0", BASE)
    _, other_raw = release("1.0.1", BASE)
    stage(installer, BASE)
    with pytest.raises(InstallError, match="do not match"):
        installer.install(manifest, other_raw)


def test_space_needed_counts_copies_unpacking_and_what_clearing_frees(tmp_path: Path) -> None:
    root = tmp_path / "root"
    installer = SlotInstaller(root)
    install_and_commit(installer, "1.0.0", BASE)
    total = sum(len(v) for v in contents(BASE).values())
    manifest, _ = release("1.0.1", {**BASE, "notes.txt": b"x"})
    # Everything but notes.txt is copied from the running slot; notes.txt is still to download.
    assert total <= installer.space_needed(manifest) <= total + 10 * 4096
    assert installer.download_bytes(manifest) == 4096
    stage(installer, {"notes.txt": b"x"})
    # Staged objects are linked, not copied: they need no new space.
    assert installer.space_needed(manifest) == installer.space_needed(release("1.0.1", BASE)[0])
    copying = SlotInstaller(root, link_staged=False)
    assert copying.space_needed(manifest) == installer.space_needed(manifest) + 4096
    # Once slot b holds a release, clearing it gives its space back.
    old = {"old.bin": random.Random(9).randbytes(200_000)}
    stage(installer, old)
    installer.install(*release("0.9.0", old))
    installer.discard_staging()  # no other link keeps old.bin's blocks
    assert total - 200_000 - 4096 <= installer.space_needed(manifest) <= total + 10 * 4096 - 200_000


def test_disk_full_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install_and_commit(SlotInstaller(root), "1.0.0", BASE)
    old_manifest, old_raw = release("0.9.0", {"old.txt": b"older release"})
    stage(SlotInstaller(root), {"old.txt": b"older release"})
    older = SlotInstaller(root).install(old_manifest, old_raw)  # slot b: the previous release
    installer = SlotInstaller(root, margin_bytes=1_000_000, free_space=lambda _path: 500_000)
    manifest, raw = release("1.1.0", {**BASE, "notes.txt": b"1.1"})
    stage(installer, {"notes.txt": b"1.1"})
    with pytest.raises(DiskFull) as info:
        installer.install(manifest, raw)
    message = str(info.value)
    assert "release 1.1.0 needs" in message and "only 0.5 MB is free" in message
    assert "1.0 MB safety margin" in message and "nothing was written" in message
    assert installer.verify(older) == old_manifest  # slot b untouched
    with pytest.raises(DiskFull):
        installer.check_space(manifest)


def test_real_enospc_leaves_no_half_written_slot(tmp_path: Path) -> None:
    big = random.Random(4).randbytes(1_200_000)
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        root = disk / "root"
        running = install_and_commit(SlotInstaller(root), "1.0.0", {"big.bin": big, "run": b"run"})
        running_before = {p: p.read_bytes() for p in running.rglob("*") if p.is_file()}
        # The check before writing passes (another process fills the disk meanwhile, or the estimate
        # is off); the write itself then fails with ENOSPC: three copies of 1.2 MB do not fit.
        installer = SlotInstaller(root, free_space=lambda _path: 10**9)
        files: Files = {"big.bin": big, "copy1.bin": big, "copy2.bin": big, "new.txt": b"new"}
        manifest, raw = release("1.1.0", files)
        stage(installer, {"new.txt": b"new"})
        with pytest.raises(DiskFull) as info:
            installer.install(manifest, raw)
        assert "filled up while release 1.1.0 was written" in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        slot = installer.slot_path("b")
        assert not (slot / MANIFEST_FILE).exists() and tree(slot) == []
        assert installer.slot_manifest(slot) is None
        assert {p: p.read_bytes() for p in running.rglob("*") if p.is_file()} == running_before
        assert installer.verify(running).version == "1.0.0"
        assert installer.staged_object(sha(b"new")).read_bytes() == b"new"  # kept for the retry
        # With the space back (a release that fits), the same installer succeeds.
        fits = {"big.bin": big, "new.txt": b"new"}
        assert installer.install(*release("1.1.1", fits)) == slot


def test_discard_staging(tmp_path: Path) -> None:
    installer = SlotInstaller(tmp_path / "root")
    stage(installer, BASE)
    (installer.staging / (sha(b"p") + ".part")).write_bytes(b"partial")
    installer.discard_staging()
    assert not installer.staging.exists()
    installer.discard_staging()  # nothing there: fine


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
_PATH = st.lists(_NAME, min_size=1, max_size=4).map("/".join)


def _valid_tree(paths: list[str]) -> bool:
    chosen = set(paths)
    for path in chosen:
        if path.split("/")[0] in (MANIFEST_FILE, "site"):
            return False
        parts = path.split("/")
        if any("/".join(parts[:i]) in chosen for i in range(1, len(parts))):
            return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        _PATH,
        st.tuples(st.binary(max_size=3000), st.sampled_from([0o644, 0o755, 0o600, 0o444])),
        min_size=1,
        max_size=12,
    ).filter(lambda d: _valid_tree(list(d))),
    st.booleans(),
)
def test_random_releases_round_trip(files: dict[str, tuple[bytes, int]], link: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        installer = SlotInstaller(Path(tmp) / "root", link_staged=link)
        manifest, raw = release("2.0.0", dict(files))
        stage(installer, dict(files))
        slot = installer.install(manifest, raw)
        assert installer.verify(slot) == manifest
        for path, (data, mode) in files.items():
            assert (slot / path).read_bytes() == data
            assert os.stat(slot / path).st_mode & 0o777 == mode
        atomic_symlink("slots/a", installer.current_link)
        # The next release reuses everything from the running slot: nothing to download.
        manifest2, raw2 = release("2.0.1", dict(files))
        assert installer.missing_objects(manifest2) == {}
        installer.discard_staging()
        assert installer.verify(installer.install(manifest2, raw2)) == manifest2
