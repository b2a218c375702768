"""Tracker: stable ids on synthetic trajectories, occlusion gaps, byte stage, birth/death, labels."""

from __future__ import annotations

import numpy as np

from agent.camera.config import TrackerConfig
from agent.camera.geometry import Box
from agent.camera.tracker import Candidate, Tracker

FPS = 10.0


def _box(cx: float, cy: float, w: float = 30, h: float = 20) -> Box:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _run(tracker: Tracker, frames: list[list[Candidate]]) -> list[dict[int, Box]]:
    out = []
    for i, cands in enumerate(frames):
        out.append({t.id: t.box for t in tracker.update(cands, i / FPS)})
    return out


def test_ids_stay_stable_when_two_objects_cross_paths() -> None:
    tracker = Tracker(TrackerConfig())
    frames = []
    for i in range(60):
        a = Candidate(_box(20 + 5 * i, 100 + 0.4 * i), 0.9, "car")  # rightwards, drifting down
        b = Candidate(_box(320 - 5 * i, 112 - 0.4 * i), 0.8, "motorcycle")  # leftwards, drifting up
        frames.append([a, b])
    history = _run(tracker, frames)
    ids_a = {
        min(ids, key=lambda k: abs(ids[k][0] - (5 + 5 * i))) for i, ids in enumerate(history) if len(ids) == 2
    }
    assert len({k for h in history for k in h}) == 2, "exactly two ids over the whole sequence"
    assert len(ids_a) == 1, "the rightward object keeps its id through the crossing"
    assert all(len(h) == 2 for h in history[2:])


def test_id_survives_an_occlusion_gap_and_dies_after_max_lost() -> None:
    tracker = Tracker(TrackerConfig(max_lost_frames=8, hold_stationary=False))
    frames: list[list[Candidate]] = []
    for i in range(40):
        hidden = 15 <= i < 21  # six frames behind a bus
        frames.append([] if hidden else [Candidate(_box(10 + 6 * i, 80), 0.9, None, "motion")])
    frames += [[] for _ in range(10)]
    history = _run(tracker, frames)
    ids = {k for h in history for k in h}
    assert ids == {1}
    assert all(1 in h for h in history[2:15]) and all(1 in h for h in history[21:40])
    assert not tracker.tracks, "lost for longer than max_lost_frames: removed"
    finished = tracker.pop_finished()
    assert [t.id for t in finished] == [1] and not finished[0].confirmed


def test_low_score_detections_keep_a_track_alive() -> None:
    tracker = Tracker(TrackerConfig(max_lost_frames=2, hold_stationary=False))
    frames = [[Candidate(_box(10 + 5 * i, 50), 0.9, "car")] for i in range(5)]
    frames += [
        [Candidate(_box(10 + 5 * i, 50), 0.2, "car")] for i in range(5, 15)
    ]  # partly hidden: low score
    history = _run(tracker, frames)
    assert all(list(h) == [1] for h in history[2:])


def test_birth_needs_consecutive_hits_and_noise_gets_no_track() -> None:
    tracker = Tracker(TrackerConfig(min_hits=3))
    history = _run(tracker, [[Candidate(_box(50, 50), 0.9)], [], [], [Candidate(_box(200, 50), 0.9)]])
    assert all(not h for h in history)
    assert tracker.pop_finished() == []
    low = Tracker(TrackerConfig())
    assert not any(_run(low, [[Candidate(_box(50, 50), 0.3)]] * 5)), "low-score candidates never start tracks"


def test_stopped_vehicle_is_held_while_its_patch_is_unchanged() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    tracker = Tracker(TrackerConfig(max_lost_frames=3))
    box = _box(100, 60, 40, 30)
    for i in range(4):
        tracker.update([Candidate(box, 0.9, None, "motion")], i / FPS, image)
    for i in range(4, 40):  # no candidates at all (nothing moves), same image
        active = tracker.update([], i / FPS, image)
        assert [t.id for t in active] == [1]
    assert tracker.tracks[0].velocity() == (0.0, 0.0)
    changed = image.copy()
    changed[40:80, 75:125] = 0  # the car left
    for i in range(40, 45):
        tracker.update([], i / FPS, changed)
    assert not tracker.tracks


def test_label_vote_confirmation_and_walking_people() -> None:
    tracker = Tracker(TrackerConfig())
    for i in range(10):
        label = "motorcycle" if i in (3, 6, 8) else ("car" if i == 5 else None)
        tracker.update(
            [Candidate(_box(10 + 8 * i, 40), 0.9, label, "detector" if label else "motion")], i / FPS
        )
    (track,) = tracker.tracks
    assert track.confirmed and track.label == "motorcycle" and track.vehicle_hits == 4

    walker = Tracker(TrackerConfig())
    for i in range(20):
        walker.update([Candidate(_box(50 + 1.0 * i, 40, 12, 30), 0.8, "person")], i / FPS)
    assert walker.tracks[0].label == "person", "3 px/s for a 30 px tall person is walking pace"

    rider = Tracker(TrackerConfig())
    for i in range(20):
        rider.update([Candidate(_box(50 + 9.0 * i, 40, 40, 25), 0.8, "person")], i / FPS)
    assert rider.tracks[0].label == "vehicle", "a 'person' at 90 px/s is a small motorbike, not a pedestrian"
