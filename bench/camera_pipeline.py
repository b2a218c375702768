"""Camera pipeline throughput vs the bare onnxruntime session on the same frames.

* baseline: per frame, letterbox + ``session.run`` of the same verified yolox_nano with the same
  thread count — the least anyone must do to run the model on a frame.
* ours, ``every_frame``: the whole pipeline (motion gate, detector with YOLOX decoding + NMS,
  blob merging, ByteTrack tracker, counting rules) with the detector forced on every frame: the
  overhead of everything that is not inference. Target: at most 15 % slower than the baseline.
* ours, default: the same with the motion gate deciding (detector only when something moves).

    python -m bench.camera_pipeline [--runs 3] [--frames 377] [--threads 2]
"""

from __future__ import annotations

import time

from agent.camera.config import CameraConfig, DetectorConfig, LineConfig
from bench.camera_common import clip_frames, detector, environment
from bench.common import exit_on_sigterm, median, parser, report


def main() -> None:
    exit_on_sigterm()
    p = parser(__doc__ or "", runs=3)
    p.add_argument("--frames", type=int, default=None, help="frames to use (default: the whole clip)")
    p.add_argument("--threads", type=int, default=2, help="detector threads (default 2)")
    args = p.parse_args()
    frames, what = clip_frames(args.frames)
    width, height = frames[0].size
    det = detector(args.threads)
    line = LineConfig(id="mid", points=((0, height / 2), (width, height / 2)))
    every = CameraConfig(lines=[line], detector=DetectorConfig(every_frame=True, threads=args.threads))
    gated = CameraConfig(lines=[line], detector=DetectorConfig(threads=args.threads))
    print(f"frames: {what}; detector threads {args.threads}; {environment()}")

    from agent.camera.pipeline import Pipeline
    from agent.camera.yolox import letterbox

    baseline, ours, ours_gated = [], [], []
    calls = []
    chunk = 20  # interleave the variants in short chunks so that load from elsewhere hits all alike
    for _ in range(args.runs):
        spent = {"base": 0.0, "every": 0.0, "gated": 0.0}
        p_every = Pipeline(every, frames[0].size, det)
        p_gated = Pipeline(gated, frames[0].size, det)
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            t0 = time.perf_counter()
            for frame in part:
                boxed, _ = letterbox(frame.image, 416, 416)
                det.raw(boxed)
            t1 = time.perf_counter()
            for frame in part:
                p_every.process(frame)
            t2 = time.perf_counter()
            for frame in part:
                p_gated.process(frame)
            t3 = time.perf_counter()
            for key, value in zip(spent, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                spent[key] += value
        baseline.append(len(frames) / spent["base"])
        ours.append(len(frames) / spent["every"])
        ours_gated.append(len(frames) / spent["gated"])
        calls.append(p_gated.stats.detector_calls)

    ratio = report(
        "pipeline, detector every frame",
        "frames/s",
        ours,
        baseline,
        baseline_name="letterbox+session.run",
        target=">= 0.87 (overhead <= 15 %)",
    )
    paired = median([o / b for o, b in zip(ours, baseline, strict=True)])
    print(
        f"  overhead vs letterbox+session.run: {100 * (1 / ratio - 1):.1f} % (ratio of medians); "
        f"{100 * (1 / paired - 1):.1f} % (median of the per-run ratios, same-run pairs)"
    )
    report(
        "pipeline, motion-gated (default)",
        "frames/s",
        ours_gated,
        baseline,
        baseline_name="letterbox+session.run",
    )
    print(f"  detector calls with the gate: {median(calls):.0f} of {len(frames)} frames")


if __name__ == "__main__":
    main()
