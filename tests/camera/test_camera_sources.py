"""Frame sources: the real clip, corrupt files, supervision with capped backoff, spec parsing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from hw.camera import (
    Backoff,
    CorruptVideoError,
    FrameSource,
    LatestFrameReader,
    ReconnectingSource,
    SourceOpenError,
    SourceSpec,
    SourceStats,
    parse_source_spec,
)
from hw.camera_cv import OpenCVStreamSource, VideoFileSource, _redact
from hw.camera_pi import Picamera2Source
from hw.camera_synth import SyntheticSource


def _grey(i: int) -> np.ndarray:
    return np.full((48, 64, 3), i % 256, np.uint8)


def test_real_clip_frames_have_sequence_and_clip_time(clip_path: Path) -> None:
    source = VideoFileSource(clip_path, start_wall=1000.0)
    source.open()
    try:
        assert isinstance(source, FrameSource)
        assert source.fps == pytest.approx(12.5)
        frames = [source.read() for _ in range(5)]
    finally:
        source.close()
    assert [f.seq for f in frames if f] == [1, 2, 3, 4, 5]
    assert [f.t for f in frames if f] == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32])
    assert frames[0] is not None and frames[0].size == (768, 432) and frames[0].wall == 1000.0


def test_corrupt_video_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(CorruptVideoError, match=r"cannot decode video file .*broken\.mp4.*corrupt"):
        VideoFileSource(bad).open()


def test_truncated_real_video_is_refused_or_ends_cleanly(tmp_path: Path, clip_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip_path.read_bytes()[:2000])
    source = VideoFileSource(cut)
    with pytest.raises(CorruptVideoError, match="cannot decode"):
        source.open()


def test_missing_video_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match=r"nope\.mp4 does not exist"):
        VideoFileSource(tmp_path / "nope.mp4").open()


def test_dead_camera_is_reopened_with_capped_backoff_and_reported() -> None:
    sim = SyntheticSource(_grey, frames=30, fps=10, fail_after=7, start_wall=0)
    delays: list[float] = []
    states: list[str] = []
    sup = ReconnectingSource(
        lambda: sim,
        backoff=Backoff(0.5, 2.0, 1.5),
        sleep=delays.append,
        on_state=lambda s: states.append(s.state),
    )
    sup.open()
    frames = []
    while (frame := sup.read()) is not None:
        frames.append(frame)
    assert [f.seq for f in frames] == list(range(1, 31)), "sequence numbers continue across reconnects"
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(30)), "no frame lost or repeated"
    assert sup.stats.reconnects == 4 and sup.stats.failures == 4
    assert sup.stats.state == "ended"
    assert states[:3] == ["open", "reconnecting", "open"]
    assert all(d <= 1.5 for d in delays)


def test_camera_absent_at_start_retries_then_gives_up_with_the_reason() -> None:
    delays: list[float] = []
    sim = SyntheticSource(_grey, frames=3, fail_opens=3)
    sup = ReconnectingSource(
        lambda: sim, backoff=Backoff(1.0, 2.0, 5.0), sleep=delays.append, max_attempts=10
    )
    sup.open()
    assert delays == [1.0, 2.0, 4.0], "exponential backoff"
    assert sup.stats.state == "open" and sup.stats.failures == 3

    never = SyntheticSource(_grey, frames=3, fail_opens=100)
    sup2 = ReconnectingSource(
        lambda: never, backoff=Backoff(1.0, 2.0, 5.0), sleep=delays.append, max_attempts=6
    )
    with pytest.raises(SourceOpenError, match="simulated camera not present"):
        sup2.open()
    assert sup2.stats.state == "failed" and "not present" in (sup2.stats.last_error or "")
    assert max(delays) == 5.0, "backoff is capped"


def test_corrupt_file_is_not_retried(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    sup = ReconnectingSource(lambda: VideoFileSource(bad), sleep=lambda _d: None)
    with pytest.raises(CorruptVideoError):
        sup.open()
    assert sup.stats.failures == 1


def test_latest_frame_reader_drops_stale_frames_and_counts_them() -> None:
    sim = SyntheticSource(_grey, frames=40, fps=200, realtime=True)
    reader = LatestFrameReader(ReconnectingSource(lambda: sim, sleep=lambda _d: None))
    reader._source.open()
    reader.start()
    seen = []
    while (frame := reader.get(timeout=5)) is not None:
        seen.append(frame.seq)
        time.sleep(0.02)  # a slow consumer
    reader.stop()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert len(seen) < 40 and reader.stats.dropped > 0
    assert reader.stats.dropped + len(seen) <= 40


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("/data/clip.mp4", "file", "/data/clip.mp4"),
        ("file:clip.mp4", "file", "clip.mp4"),
        ("rtsp://user:pw@10.0.0.5/stream1", "rtsp", "rtsp://user:pw@10.0.0.5/stream1"),
        ("/dev/video2", "v4l2", "/dev/video2"),
        ("v4l2:0", "v4l2", "0"),
        ("gst:nvarguscamerasrc ! appsink", "gstreamer", "nvarguscamerasrc ! appsink"),
        ("picamera2", "picamera2", ""),
        ("picamera2:1", "picamera2", "1"),
        ("synthetic:stop", "synthetic", "stop"),
    ],
)
def test_source_spec_parsing(text: str, kind: str, target: str) -> None:
    assert parse_source_spec(text) == SourceSpec(kind, target)  # type: ignore[arg-type]


def test_source_errors_are_clear() -> None:
    with pytest.raises(SourceOpenError, match="empty camera source"):
        parse_source_spec("  ")
    with pytest.raises(SourceOpenError, match="must end in 'appsink'"):
        OpenCVStreamSource(SourceSpec("gstreamer", "videotestsrc ! fakesink")).open()
    with pytest.raises(SourceOpenError, match="cannot open camera v4l2:/dev/video97"):
        OpenCVStreamSource(SourceSpec("v4l2", "/dev/video97")).open()
    assert _redact("rtsp://admin:secret@cam/1") == "rtsp://***@cam/1"


def test_picamera2_is_optional() -> None:
    pytest.importorskip("numpy")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(SourceOpenError, match="picamera2 is not installed"):
            Picamera2Source().open()
    else:  # pragma: no cover - only on a Pi
        pytest.skip("running on a Raspberry Pi")


def test_source_stats_as_dict() -> None:
    stats = SourceStats(state="open", frames=3)
    assert stats.as_dict()["state"] == "open" and stats.as_dict()["frames"] == 3
