"""Release bundles: build, read back, and refuse anything that is not exactly what the manifest says."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ota_repo_helpers import make_bundle

from fleet.releases.bundle import build_bundle, extract_objects, read_bundle, verify_bundle
from fleet.releases.errors import BuildError, BundleError
from models.registry import ModelError, Registry
from protocol import clock
from protocol.release import DEFAULT_ENTRY, ReleaseManifest
from protocol.timefmt import parse_ts, utc_now

FILES = {
    "app/main.py": b"print('hello')\n",
    "app/copy.py": b"print('hello')\n",  # same content: one object
    "bin/run": b"#!/bin/sh\nexit 0\n",
    "data/blob.bin": bytes(range(256)) * 100,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip_content_addressed(tmp_path: Path) -> None:
    before = utc_now()
    bundle = make_bundle(tmp_path, "1.2.3", FILES, modes={"bin/run": 0o755}, notes="first")
    manifest, raw = read_bundle(bundle)
    assert raw == manifest.to_json()
    assert manifest.version == "1.2.3" and manifest.notes == "first" and manifest.entry == list(DEFAULT_ENTRY)
    assert before.replace(microsecond=0) <= parse_ts(manifest.build_time) <= utc_now()
    by_path = {f.path: f for f in manifest.files}
    assert set(by_path) == set(FILES)
    for path, content in FILES.items():
        assert (by_path[path].sha256, by_path[path].length) == (sha(content), len(content))
    assert by_path["bin/run"].mode == 0o755 and by_path["app/main.py"].mode == 0o644
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(f"objects/{sha(c)}" for c in set(FILES.values()))
    assert len(names) == 1 + 3  # two paths share one object
    assert verify_bundle(bundle) == manifest
    dest = tmp_path / "objects"
    _, _, written = extract_objects(bundle, dest)
    assert sorted(written) == sorted({sha(c) for c in FILES.values()})
    for content in FILES.values():
        assert (dest / sha(content)).read_bytes() == content
    # Objects already there are skipped.
    assert extract_objects(bundle, dest, have=lambda s, n: True)[2] == []
    assert not list(tmp_path.glob(".*.tmp")) and not list(dest.glob(".*"))


def test_project_wheel_firmware_and_models(tmp_path: Path) -> None:
    firmware = tmp_path / "fw"
    (firmware / "lib" / "cabinet").mkdir(parents=True)
    (firmware / "lib" / "cabinet" / "board.mpy").write_bytes(b"M\x06firmware")
    with pytest.raises(BuildError, match=r"not a firmware build .*cityedge firmware build"):
        build_bundle("2.0.0", tmp_path / "b.tar", project_wheel=False, firmware=firmware)
    digest = hashlib.sha256(b"M\x06firmware").hexdigest()
    files = {"lib/cabinet/board.mpy": digest, "main.py": digest}
    (firmware / "manifest.json").write_text(json.dumps({"version": "1.1.0", "files": files}))
    with pytest.raises(BuildError, match=r"lacks main\.py"):
        build_bundle("2.0.0", tmp_path / "b.tar", project_wheel=False, firmware=firmware)
    (firmware / "main.py").write_bytes(b"M\x06firmware")
    checkout_clock = Path(clock.__file__).read_text()
    registry = Registry.load()
    try:
        registry.path_for("yolox_nano")
        models = ["yolox_nano"]
    except ModelError:  # the model file is not in this checkout's shared folder: leave it out
        models = []
    manifest = build_bundle(
        "2.0.0",
        tmp_path / "b.tar",
        project_wheel=True,
        firmware=firmware,
        models=models,
        platform="linux_aarch64",
    )
    paths = {f.path for f in manifest.files}
    assert {"firmware/lib/cabinet/board.mpy", "firmware/main.py", "firmware/manifest.json"} <= paths
    wheels = [p for p in paths if p.startswith("wheels/cityedge-") and p.endswith(".whl")]
    assert len(wheels) == 1
    # The wheel's clock floor is the build time; the checkout keeps its own.
    objects = tmp_path / "objects"
    extract_objects(tmp_path / "b.tar", objects)
    wheel = next(f for f in manifest.files if f.path == wheels[0])
    with zipfile.ZipFile(objects / wheel.sha256) as archive:
        clock_py = archive.read("protocol/clock.py").decode()
    built = parse_ts(manifest.build_time)
    assert f"BUILD_TIME = datetime({built.year}, {built.month}, {built.day}, {built.hour}, " in clock_py
    assert Path(clock.__file__).read_text() == checkout_clock
    if models:
        spec = registry.spec("yolox_nano")
        assert next(f for f in manifest.files if f.path == f"models/{spec.file}").sha256 == spec.sha256
    assert manifest.platform == "linux_aarch64"
    assert verify_bundle(tmp_path / "b.tar") == manifest


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (lambda f: {"version": "one"}, "is not a release version"),
        (lambda f: {"sources": [("a/x", Path("/nonexistent/file"))]}, "no such file"),
        (lambda f: {"sources": [("../x", f)]}, "stay inside the slot"),
        (lambda f: {"sources": [("a/x", f), ("a/x", f)]}, "two files go to a/x"),
        (lambda f: {"models": ["no_such_model"]}, "no model named"),
        (lambda f: {"firmware": Path("/nonexistent/fw")}, "not a firmware build"),
    ],
)
def test_build_refusals(tmp_path: Path, options: Callable[[Path], dict[str, Any]], message: str) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"x")
    kwargs: dict[str, Any] = {"version": "1.0.0", "project_wheel": False, **options(local)}
    with pytest.raises(BuildError, match=message):
        build_bundle(out=tmp_path / "out.tar", **kwargs)
    assert not (tmp_path / "out.tar").exists()


# --- hostile bundles ---------------------------------------------------------------------------


def _manifest(files: dict[str, bytes]) -> ReleaseManifest:
    return ReleaseManifest.model_validate(
        {
            "version": "1.0.0",
            "build_time": "2026-12-01T00:00:00.000Z",
            "files": [{"path": p, "sha256": sha(c), "length": len(c)} for p, c in files.items()],
        }
    )


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd"
    return info, None


GOOD = {"a.txt": b"alpha", "b.txt": b"beta"}


def _good_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    raw = _manifest(GOOD).to_json()
    return [_file("manifest.json", raw), *(_file(f"objects/{sha(c)}", c) for c in GOOD.values())]


Mutation = Callable[[list[tuple[tarfile.TarInfo, bytes | None]]], list[tuple[tarfile.TarInfo, bytes | None]]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: [*m, _file("../evil.sh", b"x")], "path traversal"),
        (lambda m: [*m, _file("objects/../../evil", b"x")], "path traversal"),
        (lambda m: [*m, _file("/etc/cron.d/evil", b"x")], "path traversal"),
        (lambda m: [*m, _link("objects/link", tarfile.SYMTYPE)], "a link, folder or device"),
        (lambda m: [*m, _link("manifest.json", tarfile.LNKTYPE)], "a link, folder or device"),
        (lambda m: [*m, _file("notes.txt", b"x")], "unexpected bundle member 'notes.txt'"),
        (lambda m: [*m, _file(f"objects/{sha(b'extra')}", b"extra")], "which the manifest does not list"),
        (lambda m: m[:-1], "lacks 1 object"),
        (lambda m: [m[0], *m], "manifest.json twice"),
        (lambda m: m[1:], "has no manifest.json"),
        (lambda m: [_file("manifest.json", b"{not json"), *m[1:]], "not a valid release manifest"),
        (lambda m: [m[0], m[1], _file(m[2][0].name, b"bet")], "is 3 bytes in the bundle but 4"),
    ],
)
def test_structural_refusals(tmp_path: Path, mutate: Mutation, message: str) -> None:
    bundle = _tar(tmp_path / "bad.tar", mutate(_good_members()))
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle)


def test_tampered_object_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    members = _good_members()
    members[2] = _file(members[2][0].name, b"BETA")  # same length, other bytes
    bundle = _tar(tmp_path / "bad.tar", members)
    read_bundle(bundle)  # the structure is fine ...
    with pytest.raises(BundleError, match="does not match its sha256"):
        verify_bundle(bundle)  # ... the content is not
    dest = tmp_path / "objects"
    with pytest.raises(BundleError, match="does not match its sha256"):
        extract_objects(bundle, dest)
    assert {p.name for p in dest.iterdir()} <= {sha(b"alpha")}


@pytest.mark.parametrize("content", [b"", b"not a tar at all", None])
def test_not_a_bundle(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.tar"
    if content is None:
        import gzip

        content = gzip.compress(_tar(tmp_path / "good.tar", _good_members()).read_bytes())
    path.write_bytes(content)
    with pytest.raises(BundleError):
        verify_bundle(path)
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle(tmp_path / "missing.tar")


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _tar(tmp_path_factory.mktemp("good") / "good.tar", _good_members()).read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=6
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_random_mutations_are_refused_or_harmless(
    good_bundle: bytes, tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(good_bundle)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path / "mutated.tar"
    path.write_bytes(bytes(data))
    try:
        manifest = verify_bundle(path)
    except BundleError:
        return
    # Accepted only if every object still matches the (possibly edited but valid) manifest.
    dest = tmp_path / "out"
    extract_objects(path, dest)
    for item in manifest.files:
        assert sha((dest / item.sha256).read_bytes()) == item.sha256
