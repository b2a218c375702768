"""One camera's per-frame pipeline: motion gate → detector (when/where something moves) → tracker → rules.

The pipeline does no I/O: it takes frames and returns what happened (tracks, detections, line
crossings, violations). The runner and the offline analyser wrap it.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from agent.camera.blobsplit import SizePrior, split_blobs
from agent.camera.config import CameraConfig
from agent.camera.detector import VEHICLE_CLASSES, Detection, Detector
from agent.camera.geometry import Box, box_iou, overlap_of
from agent.camera.motion import MotionGate, MotionResult
from agent.camera.rules import Crossing, RuleEngine, Violation
from agent.camera.signal import SignalPhase
from agent.camera.tracker import Candidate, Track, Tracker
from hw.camera import Frame

QUALITY_WINDOW = 200
LARGE_CLASSES = frozenset({"car", "bus", "truck"})
"""Vehicles never cut across by the size prior (learned mostly from motorbikes)."""


@dataclass
class FrameResult:
    frame: Frame
    tracks: list[Track]
    detections: list[Detection]
    crossings: list[Crossing]
    violations: list[Violation]
    detector_ran: bool
    motion: MotionResult | None


@dataclass
class PipelineStats:
    frames: int = 0
    detector_calls: int = 0
    tracks_finished: int = 0
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    process_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    recent_confirmed: deque[bool] = field(default_factory=lambda: deque(maxlen=QUALITY_WINDOW))


def merge_candidates(detections: list[Detection], blobs: list[Box], blob_score: float) -> list[Candidate]:
    """Vehicle and person detections plus the moving blobs no detection explains.

    A person on a detected vehicle (a rider) is not a candidate of its own. A detection supported
    by a moving blob scores at least ``blob_score``.
    """
    vehicles = [d for d in detections if d.label in VEHICLE_CLASSES]
    persons = [
        d
        for d in detections
        if d.label == "person" and not any(overlap_of(d.box, v.box) >= 0.3 for v in vehicles)
    ]
    found = vehicles + persons
    cands: list[Candidate] = []
    explained: set[int] = set()
    for d in found:
        support = [
            i
            for i, blob in enumerate(blobs)
            if box_iou(blob, d.box) >= 0.3 or overlap_of(blob, d.box) >= 0.6 or overlap_of(d.box, blob) >= 0.6
        ]
        explained.update(support)
        # A weak detection of something that moves is as good as a moving blob.
        score = max(d.score, blob_score) if support else d.score
        cands.append(Candidate(d.box, score, d.label, "detector", label_score=d.score))
    cands += [Candidate(b, blob_score, None, "motion") for i, b in enumerate(blobs) if i not in explained]
    return cands


class Pipeline:
    def __init__(
        self,
        config: CameraConfig,
        frame_size: tuple[int, int],
        detector: Detector | None,
        signals: dict[str, SignalPhase] | None = None,
    ) -> None:
        config.check_frame(*frame_size)
        self.config = config
        self.frame_size = frame_size
        self.detector = detector if config.detector.enabled else None
        self.motion = MotionGate(config.motion, frame_size) if config.motion.enabled else None
        self.tracker = Tracker(config.tracker)
        self.sizes = (
            SizePrior(frame_size[1], config.tracker.expected_size)
            if config.tracker.split_wide_blobs
            else None
        )
        self.rules = RuleEngine(config, signals)
        self.stats = PipelineStats()
        self._last_full = -1e18
        self._since_detect = 1 << 30
        self._previous = MotionResult(moving=False, fraction=0.0)
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector")
        return self._executor

    def close(self) -> None:
        """Stop the detector thread (the pipeline can still be used; it restarts on demand)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _should_detect(
        self, motion: MotionResult | None, t: float
    ) -> tuple[bool, tuple[int, int, int, int] | None]:
        if self.detector is None:
            return False, None
        if motion is None or self.config.detector.every_frame:
            return True, None
        refresh = bool(self.tracker.tracks) and t - self._last_full >= self.config.detector.refresh_s
        if refresh:
            return True, None
        if not motion.moving or self._since_detect < self.config.detector.stride_while_moving:
            return False, None
        roi = motion.roi if self.config.detector.roi == "motion" else None
        return True, roi

    def process(self, frame: Frame) -> FrameResult:
        """One frame. The detector runs on its own thread while the motion gate looks at the same
        frame; whether (and where) to detect is decided from the previous frame's motion."""
        started = time.perf_counter()
        previous = self._previous if self.motion is not None else None
        run, roi = self._should_detect(previous, frame.t)
        self._since_detect += 1
        pending: Future[list[Detection]] | None = None
        if run and self.detector is not None:
            self._since_detect = 0
            pending = self._pool().submit(self.detector.detect, frame.image, roi)
        motion = self.motion.update(frame.image) if self.motion is not None else None
        if motion is not None:
            self._previous = motion
        detections: list[Detection] = []
        if pending is not None and self.detector is not None:
            detections = pending.result()
            self.stats.detector_calls += 1
            self.stats.inference_ms.append(self.detector.last_inference_ms)
            if roi is None:
                self._last_full = frame.t
        blobs: list[Box] = []
        if motion is not None and motion.blobs:
            min_area = self.config.motion.min_blob_area * self.frame_size[0] * self.frame_size[1]
            predicted = self.tracker.predicted_boxes()
            large = [d.box for d in detections if d.label in LARGE_CLASSES]
            large += [
                tr.kf.peek() for tr in self.tracker.tracks if tr.confirmed and tr.label in LARGE_CLASSES
            ]
            blobs = split_blobs(motion, predicted, min_area, self.sizes, large)
            if self.sizes is not None:
                self._learn_sizes(motion.blobs, predicted, detections)
        candidates = merge_candidates(detections, blobs, self.config.tracker.blob_score)
        tracks = self.tracker.update(candidates, frame.t, frame.image)
        if self.sizes is not None:
            for track in tracks:
                if len(track.history) >= 5:
                    box = track.box
                    self.sizes.observe_motion(
                        ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), track.velocity()
                    )
        for done in self.tracker.pop_finished():
            self.stats.tracks_finished += 1
            if done.label != "person":
                self.stats.recent_confirmed.append(done.confirmed)
            self.rules.forget(done.id)
        crossings, violations = self.rules.process(tracks, frame.t, frame.wall, frame.seq)
        self.stats.frames += 1
        self.stats.process_ms.append((time.perf_counter() - started) * 1000.0)
        return FrameResult(frame, tracks, detections, crossings, violations, run, motion)

    def _learn_sizes(self, blobs: list[Box], predicted: list[Box], detections: list[Detection]) -> None:
        """Single vehicles seen on their own teach the size prior: detector boxes of vehicles, and
        blobs whose only owner has the same size (not a group that entered together)."""
        assert self.sizes is not None
        for d in detections:
            if d.label in VEHICLE_CLASSES:
                self.sizes.observe(d.box)
        for blob in blobs:
            owners = [p for p in predicted if box_iou(p, blob) >= 0.2]
            if len(owners) == 1 and box_iou(owners[0], blob) >= 0.5 and self._inside(blob):
                self.sizes.observe(blob)

    def _inside(self, box: Box) -> bool:
        """Not cut by the frame's edge (a vehicle entering shows only part of itself)."""
        w, h = self.frame_size
        return box[0] > 3 and box[1] > 3 and box[2] < w - 3 and box[3] < h - 3

    def quality(self) -> float | None:
        """Share of recent tracks the detector confirmed as a vehicle (None before any track)."""
        live = [tr.confirmed for tr in self.tracker.live_established() if tr.label != "person"]
        flags = [*self.stats.recent_confirmed, *live]
        return sum(flags) / len(flags) if flags else None

    def metrics(self) -> dict[str, float | int | None]:
        inference = list(self.stats.inference_ms)
        process = list(self.stats.process_ms)
        return {
            "camera_frames": self.stats.frames,
            "camera_detector_calls": self.stats.detector_calls,
            "camera_inference_ms_p50": round(float(np.median(inference)), 2) if inference else None,
            "camera_process_ms_p50": round(float(np.median(process)), 2) if process else None,
            "camera_tracks": len(self.tracker.live_established()),
            "camera_quality": None if (q := self.quality()) is None else round(q, 3),
        }
