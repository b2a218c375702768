"""YOLOX pre/post-processing (letterbox round trip, grid decoding, NMS) and the real detector."""

from __future__ import annotations

import logging
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from agent.camera.detector import ORT_PROVIDERS, YoloxDetector, choose_providers
from agent.camera.errors import DetectorError
from agent.camera.geometry import box_iou
from agent.camera.yolox import class_aware_nms, decode, letterbox, nms, postprocess
from models.registry import Registry

MOTORBIKE = (110.0, 67.0, 709.0, 447.0)  # where the motorcycle is in stereo_motorcycle (by eye)


def _motorcycle_bgr() -> npt.NDArray[np.uint8]:
    """scikit-image's stereo_motorcycle (left view, 8-bit RGB) in the BGR order the detector takes."""
    rgb: npt.NDArray[np.uint8] = data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert bgr.dtype == np.uint8, f"stereo_motorcycle is {bgr.dtype}, expected 8-bit pixels"
    return cast("npt.NDArray[np.uint8]", bgr)


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(40, 900),
    h=st.integers(40, 900),
    fx=st.tuples(st.floats(0.05, 0.6), st.floats(0.05, 0.6)),
    fs=st.tuples(st.floats(0.2, 0.4), st.floats(0.2, 0.4)),
)
def test_letterbox_round_trip_maps_boxes_back_to_source_pixels(
    w: int, h: int, fx: tuple[float, float], fs: tuple[float, float]
) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1 = int(fx[0] * w), int(fx[1] * h)
    x2, y2 = x1 + max(4, int(fs[0] * w)), y1 + max(4, int(fs[1] * h))
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), -1)
    boxed, geo = letterbox(image, 416, 416)
    assert boxed.shape == (416, 416, 3)
    assert (boxed[geo.resized_h :, :] == 114).all() and (boxed[:, geo.resized_w :] == 114).all()
    ys, xs = np.nonzero(boxed[:, :, 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = geo.to_source(found)[0]
    tolerance = 1.0 / geo.scale + 1.0
    assert np.allclose(back, [x1, y1, x2, y2], atol=tolerance), (back, (x1, y1, x2, y2), geo)
    exact = np.array([[x1, y1, x2, y2]], np.float32)
    assert np.allclose(geo.to_source(geo.to_input(exact)), exact, atol=1e-3)


def test_decode_uses_grids_strides_and_exp_of_log_sizes() -> None:
    raw = np.zeros((3549, 85), np.float32)
    # anchor (gx=10, gy=5) of the stride-8 grid (52 x 52): index 5 * 52 + 10
    raw[5 * 52 + 10, :4] = [0.5, 0.25, np.log(4.0), np.log(2.0)]
    # first anchor of the stride-32 grid (13 x 13) starts after 52*52 + 26*26
    raw[52 * 52 + 26 * 26 + 1 * 13 + 2, :4] = [0.0, 0.0, 0.0, 0.0]
    out = decode(raw, 416, 416)
    cx, cy, bw, bh = (10 + 0.5) * 8, (5 + 0.25) * 8, 4 * 8, 2 * 8
    assert np.allclose(out[5 * 52 + 10, :4], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    assert np.allclose(out[52 * 52 + 26 * 26 + 15, :4], [2 * 32 - 16, 32 - 16, 2 * 32 + 16, 32 + 16])
    with pytest.raises(ValueError, match="wrong input size"):
        decode(raw, 320, 320)


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([2, 2, 3, 2])
    assert nms(boxes, scores, 0.5) == [0, 3]
    assert sorted(class_aware_nms(boxes, scores, classes, 0.5)) == [0, 2, 3]


def test_postprocess_thresholds_and_filters_classes() -> None:
    decoded = np.zeros((3, 85), np.float32)
    decoded[:, :4] = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    decoded[:, 4] = [0.9, 0.9, 0.2]
    decoded[0, 5 + 3] = 0.9  # motorcycle 0.81
    decoded[1, 5 + 67] = 0.9  # cell phone (not kept)
    decoded[2, 5 + 2] = 0.9  # car 0.18 (below threshold)
    _boxes, scores, classes = postprocess(decoded, 0.3, 0.45, keep_classes={0, 1, 2, 3, 5, 7})
    assert classes.tolist() == [3] and scores[0] == pytest.approx(0.81)


def test_real_model_finds_the_motorcycle(detector: YoloxDetector) -> None:
    image = _motorcycle_bgr()
    found = detector.detect(image)
    bikes = [d for d in found if d.label == "motorcycle"]
    assert bikes and bikes[0].score > 0.8
    assert box_iou(bikes[0].box, MOTORBIKE) > 0.75
    assert detector.last_inference_ms > 0


def test_roi_detection_maps_back_to_frame_pixels(detector: YoloxDetector) -> None:
    bike = _motorcycle_bgr()
    canvas = np.full((900, 1400, 3), 90, np.uint8)
    canvas[300:800, 600:1341] = bike
    found = detector.detect(canvas, roi=(550, 250, 1400, 900))
    bikes = [d for d in found if d.label == "motorcycle"]
    shifted = (MOTORBIKE[0] + 600, MOTORBIKE[1] + 300, MOTORBIKE[2] + 600, MOTORBIKE[3] + 300)
    assert bikes and box_iou(bikes[0].box, shifted) > 0.75


def test_provider_choice_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(["tensorrt", "cuda", "cpu"], ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "not available" in caplog.text
    assert choose_providers(["cuda"], [ORT_PROVIDERS["cuda"], "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_detector_asking_for_gpu_runs_on_cpu_here(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    spec = registry.spec("yolox_nano")
    path = registry.path_for("yolox_nano")
    with caplog.at_level(logging.WARNING):
        det = YoloxDetector(path, spec.input, spec.labels, providers=["tensorrt", "cuda"], threads=1)
    assert det.providers == ["CPUExecutionProvider"]
    assert det.last_inference_ms > 0, "warmed up at construction"
    with pytest.raises(DetectorError, match="fixed 416x416 input; input_size 320 needs a model exported"):
        YoloxDetector(path, spec.input, spec.labels, threads=1, input_size=320)


def test_decoding_only_likely_anchors_gives_the_same_detections(detector: YoloxDetector) -> None:
    image = _motorcycle_bgr()
    boxed, _ = letterbox(image, 416, 416)
    raw = detector.raw(boxed)
    full: tuple[npt.NDArray[np.generic], ...] = postprocess(decode(raw, 416, 416), 0.3, 0.45, detector.keep)
    fast: tuple[npt.NDArray[np.generic], ...] = postprocess(
        decode(raw, 416, 416, min_objectness=0.3), 0.3, 0.45, detector.keep
    )
    for a, b in zip(full, fast, strict=True):
        assert np.array_equal(a, b)
    empty = postprocess(decode(raw, 416, 416, min_objectness=2.0), 0.3, 0.45)
    assert [len(x) for x in empty] == [0, 0, 0]
