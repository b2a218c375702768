"""Object detectors behind one ``Detector`` protocol; the ONNX Runtime YOLOX plugin.

Execution providers come from configuration (``tensorrt``, ``cuda``, ``openvino``, ``cpu``, in order
of preference); those not present in this onnxruntime build are skipped, and a session that fails
to build on an accelerator falls back to the CPU with a logged warning. The session is warmed up at
construction so the first real frame is not slow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from agent.camera.errors import DetectorError
from agent.camera.yolox import decode, letterbox, postprocess
from models.registry import InputSpec

log = logging.getLogger(__name__)

Provider = Literal["tensorrt", "cuda", "openvino", "cpu"]
ORT_PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
VEHICLE_CLASSES = ("bicycle", "car", "motorcycle", "bus", "truck")
DETECT_CLASSES = ("person", *VEHICLE_CLASSES)


@dataclass(frozen=True)
class Detection:
    """A detected object in source pixels."""

    box: tuple[float, float, float, float]
    score: float
    label: str


class Detector(Protocol):
    """Finds objects in a BGR image; ``roi`` (x1, y1, x2, y2) restricts the search to a region."""

    name: str
    last_inference_ms: float

    def detect(
        self, image: npt.NDArray[np.uint8], roi: tuple[int, int, int, int] | None = None
    ) -> list[Detection]: ...


def choose_providers(wanted: list[Provider], available: list[str]) -> list[str]:
    """ORT provider names for ``wanted`` that this build has, CPU always last."""
    chosen = [ORT_PROVIDERS[p] for p in wanted if ORT_PROVIDERS[p] in available and p != "cpu"]
    missing = [p for p in wanted if p != "cpu" and ORT_PROVIDERS[p] not in available]
    if missing:
        log.warning("detector: execution provider(s) %s not available in this onnxruntime; skipped", missing)
    return [*chosen, ORT_PROVIDERS["cpu"]]


def provider_options(name: str, cache_dir: Path | None) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        options: dict[str, Any] = {"trt_fp16_enable": True}
        if cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return options
    return {}


def make_session(
    model_path: Path, providers: list[Provider], threads: int, cache_dir: Path | None = None
) -> Any:
    """An onnxruntime InferenceSession with the first working provider list (CPU fallback)."""
    import onnxruntime as ort

    chosen = choose_providers(providers, list(ort.get_available_providers()))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle inference threads must not spin: the motion gate, tracker and capture thread need the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    attempts = [chosen] if chosen == ["CPUExecutionProvider"] else [chosen, ["CPUExecutionProvider"]]
    last: Exception | None = None
    for names in attempts:
        try:
            session = ort.InferenceSession(
                str(model_path),
                sess_options=options,
                providers=[(n, provider_options(n, cache_dir)) for n in names],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors at this boundary
            last = exc
            log.warning("detector: cannot build session with %s (%s); falling back to CPU", names, exc)
            continue
        log.info("detector: %s on %s", model_path.name, session.get_providers())
        return session
    raise DetectorError(f"cannot load model {model_path}: {last}")


class YoloxDetector:
    """YOLOX ONNX model (e.g. yolox_nano) run with onnxruntime."""

    def __init__(
        self,
        model_path: Path,
        spec: InputSpec,
        labels: list[str],
        *,
        providers: list[Provider] | None = None,
        threads: int = 2,
        score_threshold: float = 0.3,
        nms_threshold: float = 0.45,
        keep_labels: tuple[str, ...] = DETECT_CLASSES,
        input_size: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.name = model_path.stem
        self.labels = labels
        self.width = input_size or spec.width
        self.height = input_size or spec.height
        self.pad = spec.pad_value
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        unknown = [label for label in keep_labels if label not in labels]
        if unknown:
            raise DetectorError(f"model {self.name} has no class(es) {unknown}")
        self.keep = {labels.index(label) for label in keep_labels}
        self.session = make_session(model_path, providers or ["cpu"], threads, cache_dir)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        fixed = [d for d in list(model_input.shape)[2:4] if isinstance(d, int)]
        if len(fixed) == 2 and (fixed[0], fixed[1]) != (self.height, self.width):
            raise DetectorError(
                f"model {self.name} has a fixed {fixed[1]}x{fixed[0]} input; input_size {self.width} needs a "
                "model exported at that size (see docs/camera.md)"
            )
        self.providers: list[str] = list(self.session.get_providers())
        self.last_inference_ms = 0.0
        self._warm_up()

    def _warm_up(self) -> None:
        blank = np.full((self.height, self.width, 3), self.pad, dtype=np.uint8)
        self.raw(blank)

    def raw(self, letterboxed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Run the session on one letterboxed BGR image; (anchors, 5 + classes) raw outputs."""
        tensor = np.ascontiguousarray(letterboxed.transpose(2, 0, 1)[None], dtype=np.float32)
        started = time.perf_counter()
        try:
            output = self.session.run(None, {self.input_name: tensor})[0]
        except Exception as exc:  # onnxruntime boundary
            raise DetectorError(f"detector {self.name} failed: {exc}") from exc
        self.last_inference_ms = (time.perf_counter() - started) * 1000.0
        return np.asarray(output[0], dtype=np.float32)

    def detect(
        self, image: npt.NDArray[np.uint8], roi: tuple[int, int, int, int] | None = None
    ) -> list[Detection]:
        ox, oy = 0, 0
        if roi is not None:
            x1, y1, x2, y2 = roi
            image = image[y1:y2, x1:x2]
            ox, oy = x1, y1
        boxed, geometry = letterbox(image, self.width, self.height, self.pad)
        decoded = decode(self.raw(boxed), self.width, self.height, min_objectness=self.score_threshold)
        boxes, scores, classes = postprocess(decoded, self.score_threshold, self.nms_threshold, self.keep)
        boxes = geometry.to_source(boxes)
        h, w = image.shape[:2]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w) + ox
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h) + oy
        return [
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                label=self.labels[int(c)],
            )
            for b, s, c in zip(boxes, scores, classes, strict=False)
            if b[2] - b[0] >= 2 and b[3] - b[1] >= 2
        ]
