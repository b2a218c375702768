"""``cityedge camera run``: the camera role process beside the agent.

Frames → pipeline → ``traffic.count`` every window and signed ``traffic.violation`` with evidence,
all through the agent's local API; camera metrics (fps, inference ms, dropped frames, detector
calls, quality, source state) through ``report_metrics``. The camera itself is supervised: a dead
source is reopened with capped backoff and its state is reported, the process keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.camera.config import CameraConfig
from agent.camera.counts import CountAggregator
from agent.camera.detector import Detector
from agent.camera.evidence import EvidenceBuilder
from agent.camera.outputs import CountPublisher, EvidenceJob, EvidenceWorker
from agent.camera.pipeline import FrameResult, Pipeline
from agent.camera.signal import SignalPhase
from agent.camera.sink import EventSink
from agent.camera.snapshot import SnapshotTaker
from hw.camera import CameraError, Frame, LatestFrameReader, ReconnectingSource, SourceReadError, SourceStats

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    frames: int = 0
    windows_sent: int = 0
    violations: int = 0
    evidence_published: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)


class CameraRunner:
    def __init__(
        self,
        config: CameraConfig,
        source: ReconnectingSource,
        sink: EventSink,
        *,
        detector: Detector | None,
        evidence: EvidenceBuilder,
        signals: dict[str, SignalPhase] | None = None,
        live: bool = False,
    ) -> None:
        self.config = config
        self.source = source
        self.sink = sink
        self.detector = detector
        self.signals = signals or {}
        self.live = live
        self.counts = CountPublisher(
            CountAggregator(config.lines, config.counts.window_s, config.camera_id), sink
        )
        self.worker = EvidenceWorker(
            evidence, sink, inline_max=config.evidence.inline_max_bytes, camera_id=config.camera_id
        )
        self.snapshots = SnapshotTaker(detector, config.evidence.plate_band)
        self.pipeline: Pipeline | None = None
        self.summary = RunSummary()
        self._last_metrics = time.monotonic()
        self._frames_at_metrics = 0
        source.on_state = self._source_state

    def _source_state(self, stats: SourceStats) -> None:
        """The camera's state goes to shadow/reported.peripherals (where the fleet shows devices)."""
        report = getattr(self.sink, "report_peripherals", None)
        if report is not None:
            report({"camera": {"source": self.source.name, **stats.as_dict()}})

    def run(self, stop: threading.Event, max_frames: int | None = None) -> RunSummary:
        self.source.open()
        reader = LatestFrameReader(self.source) if self.live else None
        if reader is not None:
            reader.start()
        self.worker.start()
        last_wall = time.time()
        try:
            while not stop.is_set() and (max_frames is None or self.summary.frames < max_frames):
                frame = self._next(reader)
                if frame is None:
                    if reader is None or self.source.stats.state in ("ended", "failed"):
                        break
                    continue
                last_wall = frame.wall
                self._process(frame)
        finally:
            if reader is not None:
                reader.stop()
            else:
                self.source.close()
            quality = self.pipeline.quality() if self.pipeline is not None else None
            if self.pipeline is not None:
                self.pipeline.close()
            self.counts.close(last_wall, quality)
            self.worker.stop()
            self._report_metrics(force=True)
            self.summary.windows_sent = self.counts.sent
            self.summary.evidence_published = self.worker.published
        return self.summary

    def _next(self, reader: LatestFrameReader | None) -> Frame | None:
        if reader is None:
            return self.source.read()
        try:
            return reader.get(timeout=max(5.0, self.config.metrics_interval_s))
        except SourceReadError as exc:
            log.warning("camera: %s", exc)
            self._report_metrics(force=True)
            return None
        except CameraError:
            raise

    def _process(self, frame: Frame) -> None:
        if self.pipeline is None:
            self.pipeline = Pipeline(self.config, frame.size, self.detector, self.signals)
        result = self.pipeline.process(frame)
        self.summary.frames += 1
        self.snapshots.update(frame)
        self.counts.frame(result.crossings, frame.wall, self.pipeline.quality())
        for violation in result.violations:
            self.summary.violations += 1
            self.worker.submit(self._job(result, violation))
        self._report_metrics()

    @staticmethod
    def _job(result: FrameResult, violation: Any) -> EvidenceJob:
        others = [t.box for t in result.tracks if t.id != violation.track.id]
        return EvidenceJob(result.frame, violation, others, list(result.detections))

    def metrics(self) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = max(now - self._last_metrics, 1e-6)
        frames = self.summary.frames - self._frames_at_metrics
        stats = self.source.stats
        base: dict[str, Any] = self.pipeline.metrics() if self.pipeline is not None else {}
        base.update(
            camera_fps=round(frames / elapsed, 2),
            camera_dropped_frames=stats.dropped,
            camera_source_state=stats.state,
            camera_reconnects=stats.reconnects,
            camera_source_failures=stats.failures,
            camera_counts_pending=len(self.counts.pending),
            camera_evidence_pending=self.worker.pending,
            camera_violations=self.summary.violations,
        )
        return base

    def _report_metrics(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_metrics < self.config.metrics_interval_s:
            return
        metrics = self.metrics()
        self.sink.report_metrics(metrics)
        self.summary.metrics.append(metrics)
        self._last_metrics = time.monotonic()
        self._frames_at_metrics = self.summary.frames
