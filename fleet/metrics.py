"""Prometheus text exposition of one worker's counters and the fleet totals (prometheus-client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleet.service import FleetService


class FleetCollector(Collector):
    """Reads the worker's IngestStats and the database totals at scrape time."""

    def __init__(self, service: FleetService) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats
        snap = stats.snapshot()
        received = CounterMetricFamily(
            "fleet_ingest_received", "Messages received by this worker", labels=["family"]
        )
        for family, count in sorted(snap["received"].items()):
            received.add_metric([family], count)
        yield received
        yield CounterMetricFamily(
            "fleet_ingest_committed", "Messages committed and acknowledged", value=snap["committed_total"]
        )
        rejected = CounterMetricFamily(
            "fleet_ingest_rejected", "Messages rejected by this worker", labels=["reason", "family"]
        )
        for entry in snap["rejected"]:
            rejected.add_metric([entry["reason"], entry["family"]], entry["count"])
        yield rejected
        yield CounterMetricFamily("fleet_ingest_batches", "Committed batches", value=snap["batches"])
        yield CounterMetricFamily("fleet_db_retries", "Database retries", value=snap["db_retries"])
        yield CounterMetricFamily("fleet_events_new", "New events stored", value=snap["events_new"])
        yield CounterMetricFamily(
            "fleet_events_duplicate", "Duplicate events dropped", value=snap["events_duplicate"]
        )
        yield GaugeMetricFamily("fleet_ingest_rate", "Committed messages/s (5 s)", value=snap["rate_per_s"])
        yield GaugeMetricFamily("fleet_ingest_queue_depth", "Messages waiting", value=snap["queue_depth"])
        rpc = CounterMetricFamily("fleet_rpc_calls", "RPC answers", labels=["service", "outcome"])
        for entry in snap["rpc"]:
            rpc.add_metric([entry["service"], entry["outcome"]], entry["count"])
        yield rpc
        yield CounterMetricFamily("fleet_commands_issued", "Commands issued", value=snap["commands_issued"])
        yield from self._totals()

    def _totals(self) -> Iterator[Metric]:
        counts = self.service.store.counts()
        devices = GaugeMetricFamily("fleet_devices", "Known devices", labels=["online"])
        devices.add_metric(["true"], counts["devices_online"])
        devices.add_metric(["false"], counts["devices"] - counts["devices_online"])
        yield devices
        yield GaugeMetricFamily(
            "fleet_devices_silent",
            "Devices whose status says online but that sent nothing for longer than silent_after_s",
            value=counts.get("devices_silent", 0),
        )
        from fleet.alerts import KINDS, open_counts

        alerts = GaugeMetricFamily("fleet_alerts_open", "Open alerts computed by the fleet", labels=["kind"])
        by_kind = open_counts(self.service.store)
        for kind in KINDS:
            alerts.add_metric([kind], by_kind.get(kind, 0))
        yield alerts
        yield GaugeMetricFamily("fleet_events", "Events stored", value=counts["events"])
        yield GaugeMetricFamily("fleet_gaps_open", "Open sequence gaps", value=counts["gaps_open"])
        commands = GaugeMetricFamily("fleet_commands", "Commands by status", labels=["status"])
        for status, count in sorted(counts["commands"].items()):
            commands.add_metric([status], count)
        yield commands


def render_metrics(service: FleetService) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(FleetCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST
