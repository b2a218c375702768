"""Release bundles: build one from local files, read one back with every member checked.

A bundle is an uncompressed tar holding ``manifest.json`` (the release manifest, see
``protocol/release.py``) and one ``objects/<sha256>`` per distinct file content. Two files with the
same content are stored once, and two releases that share a file share its object once published.

Reading one back (``read_bundle``, ``verify_bundle``, ``extract_objects``) is in ``bundleread``
and re-exported here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from fleet.releases.bundleread import extract_objects, read_bundle, verify_bundle
from fleet.releases.errors import BuildError
from fleet.releases.report import NullReporter, Reporter
from protocol.atomic import fsync_dir
from protocol.release import (
    DEFAULT_ENTRY,
    MANIFEST_FILE,
    OBJECTS_DIR,
    ReleaseFile,
    ReleaseManifest,
    check_relative_path,
    check_version,
)
from protocol.timefmt import format_ts, utc_now

__all__ = [
    "build_bundle",
    "build_project_wheel",
    "extract_objects",
    "read_bundle",
    "sha256_file",
    "verify_bundle",
]

CHUNK = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout this package lives in (where the project wheel is built from)."""
_SOURCE_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


@dataclass(frozen=True)
class _Input:
    slot_path: str
    local: Path
    mode: int


def sha256_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and length of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


# --- building ----------------------------------------------------------------------------------


def build_bundle(
    version: str,
    out: Path,
    *,
    sources: Sequence[tuple[str, Path]] = (),
    project_wheel: bool = True,
    with_deps: bool = False,
    models: Sequence[str] = (),
    firmware: Path | None = None,
    entry: list[str] | None = None,
    health_check: list[str] | None = None,
    notes: str = "",
    platform: str = "any",
    python_version: str | None = None,
    models_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> ReleaseManifest:
    """Build the bundle of release ``version`` at ``out`` (written atomically) and return its manifest.

    ``sources`` maps slot paths to local files; ``project_wheel`` adds the wheel of this checkout
    under ``wheels/``; ``with_deps`` adds the wheels of its dependencies for ``platform`` (slow,
    needs the package index); ``models`` are model registry names, copied under ``models/<file>``
    after their pinned sha256 is checked; every file under ``firmware`` goes under ``firmware/``.
    """
    report = reporter or NullReporter()
    try:
        check_version(version)
        for _, local in sources:
            if not local.is_file():
                raise BuildError(f"--file {local}: no such file")
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    built = utc_now().replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="cityedge-release-") as tmp:
        work = Path(tmp)
        inputs: list[_Input] = []
        if project_wheel:
            report.start("building the project wheel")
            inputs += _wheels("wheels", build_project_wheel(work / "wheel", build_time=built))
        if with_deps:
            report.start(f"collecting dependency wheels for {platform}")
            inputs += _wheels("wheels", _dependency_wheels(work / "deps", platform, python_version))
        inputs += _model_inputs(models, models_dir)
        if firmware is not None:
            _check_firmware(firmware)
            inputs += _tree_inputs("firmware", firmware)
        inputs += [_Input(_slot_path(slot), local, _mode(local)) for slot, local in sources]
        return _write_bundle(out, inputs, version, built, entry, health_check, notes, platform, report)


def _check_firmware(build: Path) -> None:
    """The agent flashes ``firmware/`` onto the I/O board only if it is a complete build."""
    from hw.iobflash import FlashError, read_build

    try:
        manifest = read_build(build)
    except FlashError as exc:
        raise BuildError(f"--firmware: {exc}") from exc
    missing = [rel for rel in manifest["files"] if not (build / rel).is_file()]
    if missing:
        raise BuildError(f"--firmware: {build} lacks {', '.join(missing[:3])}: build the firmware again")


def build_project_wheel(
    dest: Path, root: Path = REPO_ROOT, *, build_time: datetime | None = None
) -> list[Path]:
    """``pip wheel --no-deps --no-build-isolation`` of the project at ``root``, from a clean copy of its
    packages (a stale ``build/`` in the checkout can never leak removed modules into a release).

    With ``build_time``, the copy's ``protocol.clock.BUILD_TIME`` (the devices' clock floor) is set
    to it; the checkout itself is not changed."""
    if not (root / "pyproject.toml").is_file():
        raise BuildError(
            f"cannot build the project wheel: {root} has no pyproject.toml (build from a source checkout, "
            "or leave the wheel out with --no-project-wheel and add files with --file)"
        )
    src = dest.with_name(dest.name + "-src")
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / "__init__.py").is_file():
            shutil.copytree(child, src / child.name, ignore=_SOURCE_SKIP, symlinks=False)
    if build_time is not None:
        _set_build_time(src / "protocol" / "clock.py", build_time)
    _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src)], "the project wheel")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel produced no wheel in {dest}")
    return wheels


_BUILD_TIME_LINE = re.compile(r"^BUILD_TIME = datetime\(.*\)$", re.MULTILINE)


def _set_build_time(clock_py: Path, moment: datetime) -> None:
    utc = moment.astimezone(timezone.utc)
    line = (
        f"BUILD_TIME = datetime({utc.year}, {utc.month}, {utc.day}, {utc.hour}, {utc.minute}, {utc.second}, "
        "tzinfo=timezone.utc)"
    )
    text = clock_py.read_text(encoding="utf-8")
    new, count = _BUILD_TIME_LINE.subn(line, text)
    if count != 1:
        raise BuildError(
            f"{clock_py} has no single `BUILD_TIME = datetime(...)` line to set the build time in"
        )
    clock_py.write_text(new, encoding="utf-8")


def _dependency_wheels(dest: Path, platform: str, python_version: str | None) -> list[Path]:
    from models.registry import toml_loads

    data = toml_loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = list(data.get("project", {}).get("dependencies", []))
    if platform in ("any", _local_platform()):
        _pip(["wheel", "-q", "-w", str(dest), *requirements], "the dependency wheels")
    else:
        arch = platform.removeprefix("linux_")
        pyver = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        _pip(
            [
                "download", "-q", "--only-binary=:all:", "--implementation", "cp",
                "--python-version", pyver, "--platform", f"manylinux_2_36_{arch}",
                "--platform", f"linux_{arch}", "--platform", "any", "-d", str(dest), *requirements,
            ],
            f"the dependency wheels for {platform}",
        )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def _local_platform() -> str:
    return f"linux_{os.uname().machine}"


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BuildError(f"building {what} failed (pip exit {proc.returncode}):\n{tail}")


def _wheels(folder: str, wheels: list[Path]) -> list[_Input]:
    return [_Input(f"{folder}/{wheel.name}", wheel, 0o644) for wheel in wheels]


def _model_inputs(names: Sequence[str], models_dir: Path | None) -> list[_Input]:
    if not names:
        return []
    from models.registry import ModelError, Registry

    try:
        registry = Registry.load(models_dir=models_dir)
        return [
            _Input(_slot_path(f"models/{registry.spec(name).file}"), registry.path_for(name), 0o644)
            for name in names
        ]
    except ModelError as exc:
        raise BuildError(f"model: {exc}") from exc


def _tree_inputs(prefix: str, folder: Path) -> list[_Input]:
    if not folder.is_dir():
        raise BuildError(f"--firmware {folder}: not a directory")
    found: list[_Input] = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise BuildError(f"{path} is a symbolic link: copy the file itself into {folder}")
        if path.is_file():
            found.append(
                _Input(_slot_path(f"{prefix}/{path.relative_to(folder).as_posix()}"), path, _mode(path))
            )
    if not found:
        raise BuildError(f"--firmware {folder}: the folder holds no files")
    return found


def _slot_path(path: str) -> str:
    try:
        return check_relative_path(path)
    except ValueError as exc:
        raise BuildError(f"slot path {exc}") from exc


def _mode(path: Path) -> int:
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def _write_bundle(
    out: Path,
    inputs: list[_Input],
    version: str,
    built: datetime,
    entry: list[str] | None,
    health_check: list[str] | None,
    notes: str,
    platform: str,
    report: Reporter,
) -> ReleaseManifest:
    seen: dict[str, Path] = {}
    for item in inputs:
        if item.slot_path in seen:
            raise BuildError(f"two files go to {item.slot_path}: {seen[item.slot_path]} and {item.local}")
        seen[item.slot_path] = item.local
    report.start("hashing files", sum(item.local.stat().st_size for item in inputs))
    files: list[ReleaseFile] = []
    content: dict[str, Path] = {}
    for item in inputs:
        sha, length = sha256_file(item.local)
        report.advance(length)
        files.append(ReleaseFile(path=item.slot_path, sha256=sha, length=length, mode=item.mode))
        content.setdefault(sha, item.local)
    try:
        manifest = ReleaseManifest(
            version=version,
            build_time=format_ts(built),
            platform=platform,
            entry=entry or list(DEFAULT_ENTRY),
            health_check=health_check,
            files=sorted(files, key=lambda f: f.path),
            notes=notes,
        )
    except ValueError as exc:
        raise BuildError(f"the release manifest is not valid: {exc}") from exc
    raw = manifest.to_json()
    lengths = manifest.objects()
    report.start(f"writing {out.name}", sum(lengths.values()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(MANIFEST_FILE, len(raw)), io.BytesIO(raw))
                for sha in sorted(content):
                    with content[sha].open("rb") as source:
                        reader = _HashingReader(source)
                        tar.addfile(_info(f"{OBJECTS_DIR}/{sha}", lengths[sha]), reader)
                    if reader.digest.hexdigest() != sha:
                        raise BuildError(f"{content[sha]} changed while the bundle was written; build again")
                    report.advance(lengths[sha])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return manifest


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    return info


class _HashingReader:
    """File wrapper for ``tarfile.addfile``: hashes what tarfile reads."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data
