"""Bytes a device downloads for a patch release (one module of the project changed) vs the full
release, with content-addressed objects, compared with a zstd ``--patch-from`` binary delta.

Two releases are built from this repository: ``pip wheel --no-deps --no-build-isolation`` of a
temporary copy, and again of a second copy in which one module (``--module``, default
``agent/telemetry.py``) has one line added. Each release holds the project wheel plus the same
models: the files listed in ``models/registry.toml`` where they are on disk, else a fixed 20 MB
random blob. A device that runs release A needs the objects of B it does not hold (by sha256):

* full: the distinct objects of release B (what a device with nothing installed downloads);
* patch: the objects of B missing from A (what a device on A downloads);
* zstd delta: ``zstd -19 --patch-from=A.tar B.tar`` of the two bundles (tar of every file), the
  size of a binary delta the device would have to apply.

Also shown, as an alternative layout: the project stored as an unpacked file tree (every module
its own object) instead of one wheel object.

Honest caveat: a wheel is one object, so a one-module change re-downloads that whole wheel (and a
change in a dependency re-downloads that dependency's wheel). With this project's wheel and models
that is well under 5 % of a release; a project whose wheel is large next to its models would gain
from the unpacked layout (a few kB per changed module, close to the binary delta), at the cost of
more objects per release. The sizes are deterministic: one build is reported (``--runs`` repeats
the zstd delta only).

    python -m bench.ota_patch [--module agent/telemetry.py]
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from bench.common import median, parser
from bench.ota_common import sha

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "test-artifacts",
    "var",
)


def build_wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
            "-w",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def model_files() -> tuple[dict[str, bytes], str]:
    """The registry's model files found on disk, else a fixed 20 MB random blob."""
    from models.registry import ModelError, Registry

    found: dict[str, bytes] = {}
    try:
        registry = Registry.load()
        for name in registry.names():
            try:
                path = registry.path_for(name)
            except ModelError:  # missing on this machine or not matching its hash: left out
                continue
            found[f"models/{path.name}"] = path.read_bytes()
    except ModelError:  # no usable registry: fall back to the blob
        found = {}
    if found:
        return found, f"{len(found)} registered model files"
    return {"models/model.bin": random.Random(20).randbytes(20_000_000)}, "a fixed 20 MB random blob"


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def objects(files: dict[str, bytes]) -> dict[str, int]:
    return {sha(data): len(data) for data in files.values()}


def patch_bytes(old: dict[str, bytes], new: dict[str, bytes]) -> tuple[int, int, int]:
    """(full bytes, patch bytes, objects to fetch) of ``new`` for a device holding ``old``."""
    have = objects(old)
    want = objects(new)
    missing = {s: n for s, n in want.items() if s not in have}
    return sum(want.values()), sum(missing.values()), len(missing)


def unpacked(wheel: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        return {f"app/{i.filename}": archive.read(i) for i in archive.infolist() if not i.is_dir()}


def zstd_delta(old: Path, new: Path, out: Path) -> int:
    subprocess.run(
        ["zstd", "-q", "-f", "-19", f"--patch-from={old}", str(new), "-o", str(out)],
        check=True,
        stderr=subprocess.DEVNULL,  # its tuning hints; a failure still raises
    )
    size = out.stat().st_size
    out.unlink()
    return size


def main() -> None:
    args = parser("patch release bytes vs full release (content-addressed objects) vs zstd delta", runs=1)
    args.add_argument("--module", default="agent/telemetry.py", help="module changed in release B")
    opts = args.parse_args()
    models, models_from = model_files()
    with tempfile.TemporaryDirectory(prefix="ota-patch-") as tmp_name:
        tmp = Path(tmp_name)
        shutil.copytree(REPO, tmp / "a", ignore=IGNORE)
        shutil.copytree(REPO, tmp / "b", ignore=IGNORE)
        changed = tmp / "b" / opts.module
        changed.write_text(changed.read_text(encoding="utf-8") + "\nPATCH_LEVEL = 1\n", encoding="utf-8")
        wheel_a = build_wheel(tmp / "a", tmp / "wa")
        wheel_b = build_wheel(tmp / "b", tmp / "wb")
        bytes_a, bytes_b = wheel_a.read_bytes(), wheel_b.read_bytes()
        release_a = {f"wheels/{wheel_a.name}": bytes_a, **models}
        release_b = {f"wheels/{wheel_b.name}": bytes_b, **models}
        full, patch, count = patch_bytes(release_a, release_b)
        tree_a = {**unpacked(bytes_a), **models}
        tree_b = {**unpacked(bytes_b), **models}
        tree_full, tree_patch, tree_count = patch_bytes(tree_a, tree_b)
        (tmp / "a.tar").write_bytes(tar_of(release_a))
        (tmp / "b.tar").write_bytes(tar_of(release_b))
        deltas = [zstd_delta(tmp / "a.tar", tmp / "b.tar", tmp / "delta.zst") for _ in range(opts.runs)]
    delta = int(median(deltas))
    print(
        f"release: project wheel {wheel_b.name} ({len(bytes_b):,} B) + {models_from}; changed: {opts.module}"
    )
    print(f"full release: {full:,} bytes ({len(objects(release_b))} objects)")
    print(f"patch (objects missing on a device running A): {patch:,} bytes ({count} object)")
    print(f"  ratio patch/full: {patch / full:.2%}  (target <= 5 %)")
    print(f"zstd --patch-from delta of the two bundles: {delta:,} bytes ({delta / full:.3%} of full)")
    print(
        f"alternative, project as an unpacked file tree: patch {tree_patch:,} bytes in {tree_count} objects "
        f"({tree_patch / tree_full:.3%} of {tree_full:,})"
    )


if __name__ == "__main__":
    main()
