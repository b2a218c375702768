"""ByteTrack-style multi-object tracker.

Each frame: predict every track with its constant-velocity Kalman filter; match high-score
candidates to tracks by IoU; match the remaining live tracks to low-score candidates (the "byte"
stage that keeps tracks alive through partial occlusion); match tentative tracks; start tentative
tracks from unmatched high-score candidates (unless they overlap an existing track); a tentative
track becomes active after ``min_hits`` consecutive hits; a lost track dies after
``max_lost_frames``. A track that matched nothing but whose image patch is unchanged is *held*
(a stopped vehicle does not vanish just because nothing moves).

Candidates come from the detector (with a label) or from moving blobs (no label). A track records
whether the detector confirmed it as a vehicle; its label is the detector's majority vote, or the
generic ``vehicle`` (or ``person`` for something the detector calls a person that moves at walking
pace; people are never counted as traffic).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.camera.config import TrackerConfig
from agent.camera.cvlib import cv2 as _cv2
from agent.camera.detector import VEHICLE_CLASSES
from agent.camera.geometry import Box, Point, anchor_point, overlap_of
from agent.camera.kalman import KalmanBox
from agent.camera.yolox import iou_matrix

TrackState = Literal["tentative", "active", "lost", "removed"]
PATCH = 16
HOLD_THRESHOLD = 10.0
CONFIRM_HITS = 2
"""Detector matches with a vehicle class needed before a track counts as confirmed."""
TENTATIVE_MISSES = 1
"""Frames a new (tentative) track may miss before it is dropped (thin objects flicker)."""
WALKING_HEIGHTS_PER_S = 1.0
"""A 'person' track slower than this many of its own heights per second is a pedestrian."""


@dataclass(frozen=True)
class Candidate:
    box: Box
    score: float
    label: str | None = None
    source: Literal["detector", "motion"] = "detector"
    label_score: float | None = None
    """The detector's own confidence in ``label`` (``score`` may be raised by motion support)."""


@dataclass
class Track:
    id: int
    kf: KalmanBox
    score: float
    born_t: float
    state: TrackState = "tentative"
    hits: int = 1
    lost_frames: int = 0
    updated: bool = True
    vehicle_hits: int = 0
    person_hits: int = 0
    peak_speed: float = 0.0
    """Highest speed over any 1 s of the track's life, in its own box heights per second."""
    votes: dict[str, float] = field(default_factory=dict)
    history: deque[tuple[float, Point]] = field(default_factory=lambda: deque(maxlen=120))
    seen_in: npt.NDArray[np.uint8] | None = None
    """The frame of the last match (a reference, not a copy): the stationary check compares against it."""
    last_box: Box = (0.0, 0.0, 0.0, 0.0)

    @property
    def box(self) -> Box:
        return self.last_box if self.updated else self.kf.box

    @property
    def confirmed(self) -> bool:
        """The detector recognised this object as a vehicle (at least CONFIRM_HITS times)."""
        return self.vehicle_hits >= CONFIRM_HITS

    @property
    def label(self) -> str:
        """Majority vehicle label once confirmed; 'person' for a walking person; else 'vehicle'.

        A moving object the detector calls a person but that moves faster than walking pace is
        a vehicle (small motorbikes seen side-on are often mistaken for their rider).
        """
        votes = {k: v for k, v in self.votes.items() if k in VEHICLE_CLASSES}
        if votes and self.confirmed:
            return max(votes, key=lambda k: votes[k])
        if self.person_hits >= CONFIRM_HITS and self.peak_speed < WALKING_HEIGHTS_PER_S:
            return "person"
        return "vehicle"

    def _note_speed(self) -> None:
        if len(self.history) < 2 or self.history[-1][0] - self.history[0][0] < 1.0:
            return  # judge over a full second only
        height = max(self.last_box[3] - self.last_box[1], 1.0)
        self.peak_speed = max(self.peak_speed, math.hypot(*self.velocity(1.0)) / height)

    def velocity(self, window_s: float = 1.0) -> Point:
        """Average velocity (px/s) of the anchor point over the last ``window_s`` seconds."""
        if len(self.history) < 2:
            return (0.0, 0.0)
        t1, p1 = self.history[-1]
        t0, p0 = t1, p1
        for t, p in reversed(self.history):
            t0, p0 = t, p
            if t1 - t >= window_s:
                break
        dt = t1 - t0
        return ((p1[0] - p0[0]) / dt, (p1[1] - p0[1]) / dt) if dt > 0 else (0.0, 0.0)


class Tracker:
    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)
        self.finished: list[Track] = []

    def _grey_patch(self, image: npt.NDArray[np.uint8] | None, box: Box) -> npt.NDArray[np.float32] | None:
        if image is None or not self.config.hold_stationary:
            return None
        cv2 = _cv2()

        h, w = image.shape[:2]
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, int(box[2]) + 1), min(h, int(box[3]) + 1)
        if x2 - x1 < 2 or y2 - y1 < 2:
            return None
        crop: Any = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
        return np.asarray(cv2.resize(crop, (PATCH, PATCH), interpolation=cv2.INTER_AREA), dtype=np.float32)

    def _match(
        self, tracks: list[Track], cands: list[Candidate], min_iou: float
    ) -> tuple[list[tuple[Track, Candidate]], list[Track], list[Candidate]]:
        if not tracks or not cands:
            return [], list(tracks), list(cands)
        ious = iou_matrix(
            np.array([t.kf.box for t in tracks], dtype=np.float32),
            np.array([c.box for c in cands], dtype=np.float32),
        )
        pairs: list[tuple[Track, Candidate]] = []
        used_t: set[int] = set()
        used_c: set[int] = set()
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            ti, ci = divmod(int(flat), len(cands))
            if ious[ti, ci] < min_iou:
                break
            if ti in used_t or ci in used_c:
                continue
            used_t.add(ti)
            used_c.add(ci)
            pairs.append((tracks[ti], cands[ci]))
        rest_t = [t for i, t in enumerate(tracks) if i not in used_t]
        rest_c = [c for i, c in enumerate(cands) if i not in used_c]
        return pairs, rest_t, rest_c

    def _apply(self, track: Track, cand: Candidate, t: float, image: npt.NDArray[np.uint8] | None) -> None:
        track.kf.update(cand.box)
        track.last_box = cand.box
        track.score = cand.score
        track.updated = True
        track.lost_frames = 0
        track.hits += 1
        if cand.label is not None:
            weight = cand.label_score if cand.label_score is not None else cand.score
            track.votes[cand.label] = track.votes.get(cand.label, 0.0) + weight
            if cand.label in VEHICLE_CLASSES:
                track.vehicle_hits += 1
            elif cand.label == "person":
                track.person_hits += 1
        if (track.state == "tentative" and track.hits >= self.config.min_hits) or track.state == "lost":
            track.state = "active"
        track.history.append((t, anchor_point(track.last_box, self.config.anchor)))
        track._note_speed()
        track.seen_in = image if self.config.hold_stationary else None

    def _held(self, track: Track, image: npt.NDArray[np.uint8] | None) -> bool:
        """Is the object still where it was last seen (its image patch unchanged)?"""
        if track.seen_in is None or track.state != "active" or image is None:
            return False
        if track.seen_in is image:
            return True
        then = self._grey_patch(track.seen_in, track.last_box)
        now = self._grey_patch(image, track.last_box)
        return then is not None and now is not None and float(np.abs(now - then).mean()) < HOLD_THRESHOLD

    def update(
        self, candidates: list[Candidate], t: float, image: npt.NDArray[np.uint8] | None = None
    ) -> list[Track]:
        """Advance one frame; return the active tracks (updated or held this frame)."""
        cfg = self.config
        for track in self.tracks:
            track.kf.predict()
            track.updated = False
        high = [c for c in candidates if c.score >= cfg.high_score]
        low = [c for c in candidates if cfg.low_score <= c.score < cfg.high_score]
        live = [tr for tr in self.tracks if tr.state in ("active", "lost")]
        tentative = [tr for tr in self.tracks if tr.state == "tentative"]

        pairs, unmatched, rest_high = self._match(live, high, cfg.match_iou)
        pairs2, rest_active, _ = self._match(
            [tr for tr in unmatched if tr.state == "active"], low, cfg.low_match_iou
        )
        rest_live = rest_active + [tr for tr in unmatched if tr.state == "lost"]
        pairs3, rest_tent, rest_high = self._match(tentative, rest_high, cfg.match_iou)
        for track, cand in itertools.chain(pairs, pairs2, pairs3):
            self._apply(track, cand, t, image)

        for track in rest_tent:
            track.lost_frames += 1
            if track.lost_frames > TENTATIVE_MISSES:
                track.state = "removed"
        for track in rest_live:
            if self._held(track, image):
                track.kf.hold(track.last_box)
                track.updated = True
                track.lost_frames = 0
                track.history.append((t, anchor_point(track.last_box, cfg.anchor)))
                continue
            track.state = "lost"
            track.kf.freeze_size()  # unseen, its box may move on but must not grow over others
            track.lost_frames += 1
            if track.lost_frames > cfg.max_lost_frames:
                track.state = "removed"

        existing = [tr.kf.box for tr in self.tracks if tr.state != "removed"]
        for cand in rest_high:
            if cand.score < cfg.new_track_score:
                continue
            if any(overlap_of(cand.box, b) > 0.5 or overlap_of(b, cand.box) > 0.5 for b in existing):
                continue
            track = Track(id=next(self._ids), kf=KalmanBox(cand.box), score=0.0, born_t=t, hits=0)
            self._apply(track, cand, t, image)
            self.tracks.append(track)
            existing.append(cand.box)

        self.finished.extend(tr for tr in self.tracks if tr.state == "removed" and tr.hits >= cfg.min_hits)
        self.tracks = [tr for tr in self.tracks if tr.state != "removed"]
        return [tr for tr in self.tracks if tr.state == "active" and tr.updated]

    def predicted_boxes(self) -> list[Box]:
        """Where the established live tracks are expected in the next frame."""
        return [tr.kf.peek() for tr in self.tracks if tr.state in ("active", "lost")]

    def pop_finished(self) -> list[Track]:
        """Tracks that were active once and have died since the last call."""
        done, self.finished = self.finished, []
        return done

    def live_established(self) -> list[Track]:
        """Live tracks that have reached the active state at least once."""
        return [tr for tr in self.tracks if tr.hits >= self.config.min_hits]
