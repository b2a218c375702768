"""Slot verification throughput: ``SlotInstaller.verify`` vs ``sha256sum`` over the same files.

A ~200 MB slot of mixed sizes is installed once (a 60 MB model, six 10 MB files, 200 files of
~200 KB, 3,000 of ~10 KB, and a wheel of 1,000 small modules unpacked into ``site/``). Then, warm
page cache, medians of ``--runs``:

* ours: ``SlotInstaller.verify(slot)``: parse ``manifest.json``, re-hash every file (length, sha256,
  mode, no symlink out of the slot), and every unpacked wheel file against the wheel's RECORD;
* baseline: one ``sha256sum`` process over every regular file of the slot (no comparison at all).

Throughput is the slot's bytes / wall time. Goal: ours ≥ 0.7 × sha256sum.

    python -m bench.ota_verify [--runs 5] [--mb 200]
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from agent.ota.slots import SlotInstaller
from bench.common import parser, report
from bench.ota_common import make_wheel, manifest_for, stage, tree_bytes


def build_files(total_mb: int, seed: int = 5) -> dict[str, bytes]:
    rng = random.Random(seed)
    scale = total_mb / 200
    files: dict[str, bytes] = {"models/big.onnx": rng.randbytes(int(60e6 * scale))}
    for i in range(6):
        files[f"models/m{i}.bin"] = rng.randbytes(int(10e6 * scale))
    for i in range(int(200 * scale)):
        files[f"apps/kiosk/static/a{i // 50}/asset{i}.bin"] = rng.randbytes(rng.randint(100_000, 300_000))
    for i in range(int(3000 * scale)):
        files[f"apps/camera/lib/p{i // 100}/f{i}.txt"] = rng.randbytes(rng.randint(2_000, 18_000))
    files["wheels/bench_pkg-1.0-py3-none-any.whl"] = make_wheel("bench_pkg", rng, 1000, 8000)
    return files


def time_sha256sum(slot: Path) -> float:
    names = sorted(
        os.path.relpath(os.path.join(d, f), slot)
        for d, _dirs, fs in os.walk(slot)
        for f in fs
        if not os.path.islink(os.path.join(d, f))
    )
    start = time.perf_counter()
    subprocess.run(["sha256sum", "--", *names], cwd=slot, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    args = parser("SlotInstaller.verify vs sha256sum over a ~200 MB slot", runs=5)
    args.add_argument("--mb", type=int, default=200, help="slot size in MB (default 200)")
    opts = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
        installer = SlotInstaller(Path(tmp) / "root")
        files = build_files(opts.mb)
        manifest, raw = manifest_for("1.0.0", files)
        stage(installer, files)
        slot = installer.install(manifest, raw)
        installer.discard_staging()
        size, count = tree_bytes(slot)
        installer.verify(slot)  # warm the page cache for both
        time_sha256sum(slot)
        ours, base = [], []
        for _ in range(opts.runs):
            start = time.perf_counter()
            installer.verify(slot)
            ours.append(size / 1e6 / (time.perf_counter() - start))
            base.append(size / 1e6 / time_sha256sum(slot))
        print(f"slot: {size / 1e6:.1f} MB in {count} files ({len(manifest.files)} manifest files + site/)")
        report("SlotInstaller.verify", "MB/s", ours, base, baseline_name="sha256sum", target=">= 0.7")


if __name__ == "__main__":
    main()
