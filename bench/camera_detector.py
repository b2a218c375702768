"""Detector latency at 416 px: 1 and 2 threads, fp32 and a dynamically quantised (int8) variant.

The int8 model is made here, at bench time, from the verified fp32 file with
``onnxruntime.quantization.quantize_dynamic`` into a temporary folder (never committed, never
registered). Its detections are compared with fp32 on the same frames (every 8th frame of the real
clip plus scikit-image's motorcycle): a detection agrees when fp32 has one of the same class with
IoU >= 0.5. The variant "keeps accuracy" when agreement is >= 90 % both ways and it still finds
the motorcycle.

    python -m bench.camera_detector [--runs 3] [--iterations 40]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.camera.detector import Detection, YoloxDetector
from agent.camera.geometry import box_iou
from agent.camera.yolox import letterbox
from bench.camera_common import clip_frames, detector, environment
from bench.common import exit_on_sigterm, median, parser, report
from models.registry import Registry


def quantise(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8)


def p50_ms(det: YoloxDetector, images: list[Any], iterations: int) -> float:
    boxed = [letterbox(image, 416, 416)[0] for image in images]
    times = []
    for i in range(iterations):
        started = time.perf_counter()
        det.raw(boxed[i % len(boxed)])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def agreement(a: list[list[Detection]], b: list[list[Detection]]) -> float:
    """Share of detections in ``a`` that ``b`` also has (same class, IoU >= 0.5)."""
    total = hit = 0
    for da, db in zip(a, b, strict=True):
        for d in da:
            total += 1
            hit += any(o.label == d.label and box_iou(o.box, d.box) >= 0.5 for o in db)
    return hit / total if total else 1.0


def main() -> None:
    exit_on_sigterm()
    p = parser(__doc__ or "", runs=3)
    p.add_argument("--iterations", type=int, default=40, help="inferences per measurement (default 40)")
    args = p.parse_args()
    import cv2
    from skimage import data

    frames, what = clip_frames()
    photo = data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
    bike = np.asarray(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    images = [f.image for f in frames[::8]] + [bike]
    print(f"images: every 8th frame of {what} + stereo_motorcycle; {environment()}")
    fp32_path = Registry.load().path_for("yolox_nano")
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "yolox_nano.int8.onnx"
        quantise(fp32_path, int8_path)
        sizes = int8_path.stat().st_size / 1e6, fp32_path.stat().st_size / 1e6
        print(f"int8 variant: {sizes[0]:.1f} MB (fp32 {sizes[1]:.1f} MB)")
        variants = {
            (kind, threads): detector(threads, fp32_path if kind == "fp32" else int8_path)
            for kind in ("fp32", "int8")
            for threads in (1, 2)
        }
        results: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
        for _ in range(args.runs):
            for key, det in variants.items():
                results[key].append(p50_ms(det, images, args.iterations))
        for threads in (1, 2):
            report(
                f"int8 p50 latency, {threads} thread(s)",
                "ms",
                results[("int8", threads)],
                results[("fp32", threads)],
                baseline_name=f"fp32 {threads} thread(s)",
                digits=2,
            )
        report(
            "fp32 p50 latency, 2 threads",
            "ms",
            results[("fp32", 2)],
            results[("fp32", 1)],
            baseline_name="fp32 1 thread",
            digits=2,
        )
        fp32 = [variants[("fp32", 2)].detect(image) for image in images]
        int8 = [variants[("int8", 2)].detect(image) for image in images]
    recall, precision = agreement(fp32, int8), agreement(int8, fp32)
    bikes = [d for d in int8[-1] if d.label == "motorcycle"]
    keeps = recall >= 0.9 and precision >= 0.9 and bool(bikes)
    bike32 = max((d.score for d in fp32[-1] if d.label == "motorcycle"), default=0.0)
    print(f"detections: fp32 {sum(map(len, fp32))}, int8 {sum(map(len, int8))}")
    print(f"  int8 finds {100 * recall:.1f} % of fp32's; {100 * precision:.1f} % of int8's are also in fp32")
    print(f"  motorcycle score: int8 {bikes[0].score if bikes else 0:.2f}, fp32 {bike32:.2f}")
    fp32_p50 = median(results[("fp32", 2)])
    print(f"int8 keeps accuracy: {'yes' if keeps else 'no'}; fp32 p50 at 2 threads {fp32_p50:.2f} ms")


if __name__ == "__main__":
    main()
