"""Motion gate: detector calls saved on a mostly static scene, and no crossing missed.

Scenes: ``mostly_static_scene`` (60 s at 10 fps, a few vehicles pass, the road is empty most of the
time), one per seed, with exact ground truth.

* ours: the default pipeline (detector only when something moves, plus a refresh every 2 s while
  something is tracked).
* baseline: the same pipeline with the detector on every frame.

Target: detector calls cut by at least 80 %, and the counts equal the ground truth in both.

    python -m bench.camera_motion [--runs 3] [--threads 2]
"""

from __future__ import annotations

import time

from agent.camera.config import CameraConfig, DetectorConfig, LineConfig
from agent.camera.scenegen import mostly_static_scene
from bench.camera_common import detector, environment
from bench.common import exit_on_sigterm, median, parser, report
from hw.camera import Frame


def main() -> None:
    exit_on_sigterm()
    p = parser(__doc__ or "", runs=3)
    p.add_argument("--threads", type=int, default=2, help="detector threads (default 2)")
    args = p.parse_args()
    det = detector(args.threads)
    line = LineConfig(id="mid", points=((160, 0), (160, 240)))
    gated = CameraConfig(lines=[line], detector=DetectorConfig(threads=args.threads))
    every = CameraConfig(lines=[line], detector=DetectorConfig(every_frame=True, threads=args.threads))
    print(f"mostly static scenes, 600 frames each; {environment()}")
    from agent.camera.pipeline import Pipeline

    calls_gated: list[float] = []
    calls_every: list[float] = []
    fps_gated: list[float] = []
    fps_every: list[float] = []
    cuts: list[float] = []
    missed = 0
    for run in range(args.runs):
        scene = mostly_static_scene(seed=11 + run, vehicles=4)
        frames = [Frame(scene.render(i), i + 1, i / scene.fps, i / scene.fps) for i in range(scene.frames)]
        truth = scene.true_crossings(*line.points)
        for config, calls, fps in ((gated, calls_gated, fps_gated), (every, calls_every, fps_every)):
            pipeline = Pipeline(config, (scene.width, scene.height), det)
            got = {"left_to_right": 0, "right_to_left": 0}
            started = time.perf_counter()
            for frame in frames:
                for crossing in pipeline.process(frame).crossings:
                    got[crossing.direction] += 1
            fps.append(len(frames) / (time.perf_counter() - started))
            calls.append(float(pipeline.stats.detector_calls))
            missed += sum(abs(got[d] - truth[d]) for d in truth)
            print(
                f"  seed {11 + run} {'gated' if config is gated else 'every'}: truth {truth} counted {got}, "
                f"detector calls {pipeline.stats.detector_calls}/{len(frames)}"
            )
        cuts.append(100 * (1 - calls_gated[-1] / calls_every[-1]))
    report(
        "detector calls, motion-gated",
        "calls",
        calls_gated,
        calls_every,
        baseline_name="every frame",
        digits=0,
    )
    print(f"  detector calls cut: {median(cuts):.1f} % (median of {len(cuts)}; target >= 80 %)")
    print(f"  counting errors over all runs (both variants): {missed} (target 0)")
    report("throughput, motion-gated", "frames/s", fps_gated, fps_every, baseline_name="every frame")


if __name__ == "__main__":
    main()
