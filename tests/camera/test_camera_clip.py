"""The real clip end to end through ``cityedge camera analyze``.

Ground truth, established by looking at the frames (every 10th frame, and each car's passage):
four cars cross the middle of the 768x432 picture. The white car (frames ~58-105) and the red car
(~195-240) drive up the image; the silver car (~185-225) and the white sports car (~315-350) drive
down. With a horizontal line from (0, 216) to (768, 216), "down" is left_to_right and "up" is
right_to_left (docs/camera.md): 2 each.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
from typer.testing import CliRunner

from cityedge.cli import build_app


def test_real_clip_counts_match_the_ground_truth(clip_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.mp4"
    result = CliRunner().invoke(
        build_app(),
        [
            "camera",
            "analyze",
            "--source",
            str(clip_path),
            "--line",
            "0,216,768,216",
            "--annotate",
            str(out),
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    line = report["lines"]["line1"]
    assert line["directions"]["left_to_right"]["total"] == 2
    assert line["directions"]["right_to_left"]["total"] == 2
    for direction in line["directions"].values():
        assert set(direction["classes"]) <= {"car", "bus", "truck", "vehicle"}, "all four are cars"
    assert report["frames"] == 377 and report["video_fps"] == 12.5 and report["fps"] > 0
    assert 0.0 <= report["quality"] <= 1.0
    assert report["detector_calls"] < report["frames"], "the motion gate skipped the empty road"
    assert "left_to_right" in report["direction_convention"] and report["events"] == []
    video = cv2.VideoCapture(str(out))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 377
    video.release()


def test_analyze_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    result = runner.invoke(build_app(), ["camera", "analyze", "--source", str(bad), "--no-detector"])
    assert result.exit_code == 2 and "cannot decode video file" in result.output


def test_analyze_rejects_a_line_outside_the_frame(clip_path: Path) -> None:
    result = CliRunner().invoke(
        build_app(),
        ["camera", "analyze", "--source", str(clip_path), "--line", "0,216,900,216", "--no-detector"],
    )
    assert result.exit_code == 2
    assert "point (900, 216) is outside the 768x432 camera frame" in result.output
