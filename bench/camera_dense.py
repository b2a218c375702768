"""Count accuracy per density level of ``densescene.dense_scene``, with the merge/split handling
(size prior on) against the same pipeline with ``tracker.split_wide_blobs = false`` in the same run.

``python -m bench.camera_dense [--seeds N] [--levels 1,2,3,4]``
"""

from __future__ import annotations

import argparse

from agent.camera.config import CameraConfig, LineConfig, TrackerConfig
from agent.camera.counts import summarise
from agent.camera.densescene import dense_scene
from agent.camera.pipeline import Pipeline
from agent.camera.rules import Crossing
from hw.camera_synth import SyntheticSource

LINES = [
    LineConfig(id="centre", points=((160, 0), (160, 240))),
    LineConfig(id="west", points=((70, 240), (70, 0))),
    LineConfig(id="east", points=((250, 0), (250, 240))),
]


def accuracy(level: int, seeds: int, split: bool) -> tuple[int, int]:
    right = total = 0
    for seed in range(seeds):
        scene = dense_scene(seed, level)
        source = SyntheticSource(scene.render, frames=scene.frames, fps=scene.fps, start_wall=0.0)
        source.open()
        config = CameraConfig(lines=LINES, tracker=TrackerConfig(split_wide_blobs=split))
        pipeline = Pipeline(config, (scene.width, scene.height), None)
        crossings: list[Crossing] = []
        while (frame := source.read()) is not None:
            crossings += pipeline.process(frame).crossings
        counted = summarise(LINES, crossings)
        for line in LINES:
            truth = scene.true_crossings(*line.points)
            errors = sum(abs(counted[line.id]["directions"][d]["total"] - truth[d]) for d in truth)
            right += sum(truth.values()) - errors
            total += sum(truth.values())
    return right, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--levels", default="1,2,3,4")
    args = parser.parse_args()
    for level in (int(x) for x in args.levels.split(",")):
        r1, t1 = accuracy(level, args.seeds, True)
        r0, t0 = accuracy(level, args.seeds, False)
        print(
            f"level {level}: {r1}/{t1} = {r1 / t1:.1%} with the size prior; "
            f"{r0}/{t0} = {r0 / t0:.1%} without; errors ratio {(t1 - r1) / max(t0 - r0, 1):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
