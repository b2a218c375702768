"""Install + switch time of a 50 MB release with every object staged, vs ``cp -r`` + ``sync``.

The release: a 20 MB model, 4 MB of firmware, 5 MB of kiosk fonts, a few config files and three
wheels with many small modules (one with a 12 MB compiled extension), about 50 MB of release
files; unpacked, the slot holds ~2,650 files. ``ROOT/current`` points at slot a (an older
release); every run starts from an empty slot b, page cache warm, medians of ``--runs``:

* ours: ``SlotInstaller.install`` into slot b (space check, staged objects hard-linked and
  hash-checked, wheels unpacked into ``site/``, one ``syncfs``, ``manifest.json`` written last,
  then the whole slot re-verified) + the switch, ``protocol.atomic.atomic_symlink`` of ``current``;
* ours, copying: the same with ``link_staged=False`` (every file copied; for staging on another
  file system);
* baseline: ``cp -r`` of the finished slot tree (release files + unpacked ``site/``) into a fresh
  directory, then ``sync``: the same bytes on disk with no checking at all.

    python -m bench.ota_install [--runs 5]
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agent.ota.slots import SlotInstaller
from bench.common import median, parser, report
from bench.ota_common import make_wheel, manifest_for, stage, tree_bytes
from protocol.atomic import atomic_symlink


def build_files(seed: int = 11) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        "models/detector.onnx": rng.randbytes(20_000_000),
        "firmware/io-board.bin": rng.randbytes(4_000_000),
        "config/defaults.toml": b"[agent]\nlog_level = 'info'\n" * 40,
        "apps/kiosk/catalogue.json": rng.randbytes(300_000),
        "apps/kiosk/fonts.bin": rng.randbytes(5_000_000),
        "wheels/cityedge-1.4.2-py3-none-any.whl": make_wheel("cityedge", rng, 700, 9000),
        "wheels/deps_native-2.0-cp311-cp311-linux_x86_64.whl": make_wheel(
            "deps_native", rng, 900, 9000, binary=12_000_000
        ),
        "wheels/deps_pure-3.1-py3-none-any.whl": make_wheel("deps_pure", rng, 1000, 7000),
    }
    return files


def main() -> None:
    args = parser("OTA install + switch vs cp -r + sync of the same files", runs=5)
    opts = args.parse_args()
    files = build_files()
    release_bytes = sum(len(d) for d in files.values())
    with tempfile.TemporaryDirectory(prefix="ota-install-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp) / "root"
        older, older_raw = manifest_for("1.0.0", {"config/defaults.toml": b"old"})
        first = SlotInstaller(root)
        stage(first, {"config/defaults.toml": b"old"})
        atomic_symlink(f"slots/{first.install(older, older_raw).name}", root / "current")
        manifest, raw = manifest_for("1.1.0", files)
        stage(first, files)
        ours: list[float] = []
        copying: list[float] = []
        base: list[float] = []
        verify: list[float] = []
        size = count = 0
        for run in range(opts.runs + 1):  # run 0 warms the cache and is not counted
            for link, series in ((True, ours), (False, copying)):
                installer = SlotInstaller(root, link_staged=link)
                shutil.rmtree(root / "slots" / "b", ignore_errors=True)
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                slot = installer.install(manifest, raw)
                atomic_symlink(f"slots/{slot.name}", root / "current")
                elapsed = time.perf_counter() - start
                if run:
                    series.append(elapsed)
                atomic_symlink("slots/a", root / "current")  # back, for the next run
            size, count = tree_bytes(root / "slots" / "b")
            start = time.perf_counter()
            SlotInstaller(root).verify(root / "slots" / "b")
            if run:
                verify.append(time.perf_counter() - start)
            dest = Path(tmp) / "copy"
            shutil.rmtree(dest, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            subprocess.run(["cp", "-r", str(root / "slots" / "b"), str(dest)], check=True)
            subprocess.run(["sync"], check=True)
            if run:
                base.append(time.perf_counter() - start)
    print(
        f"release: {release_bytes / 1e6:.1f} MB in {len(files)} files; "
        f"installed slot: {size / 1e6:.1f} MB in {count} files"
    )
    report("install + switch", "s", ours, base, baseline_name="cp -r + sync", digits=3)
    print(f"  install + switch, copying every file (link_staged=False): {median(copying):.3f} s")
    print(f"  of which the final re-verify of the slot (measured alone): {median(verify):.3f} s")


if __name__ == "__main__":
    main()
