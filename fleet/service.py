"""One fleet worker wired together: store, batch writer, MQTT link, RPC gateway, commands.

This is the supervisor boundary: ``start`` brings the parts up in order, a maintenance thread
expires commands, re-signs desired states, copies device revocations from the PKI inventory into
the registry, re-signs the CRL before it goes stale (``fleet.crlkeeper``) and logs the ingest
rate; a rollout thread advances staged rollouts through the fleet's backend
(``rollout_backend``); an alert thread evaluates the alert rules and, every ``housekeeping_s``,
creates partitions ahead and removes data past its retention (``fleet.retention``); ``stop``
drains and commits before disconnecting.

Several workers may share one database (``--share``). Each periodic job then runs on one worker
at a time, the holder of its lease (``fleet.leases``): ``maintenance`` (command expiry),
``rollouts``, ``alerts``, ``retention`` and ``crl``; another worker takes a job over when its
holder stops or dies. Re-signing desired states needs no lease (each change locks the device row
and checks it is still due) and every worker republishes what its own broker link failed to publish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from fleet.commands import CommandService, CommandSigner, UnsignedSigner
from fleet.config import FleetConfig
from fleet.crlkeeper import CrlKeeper, reloader
from fleet.desired import DesiredService
from fleet.devicekeys import build_intake, open_inventory
from fleet.inbound import Received
from fleet.ingest import MqttLink, sync_retained
from fleet.leases import Leases
from fleet.procwriter import ProcessWriter
from fleet.rollouts.backend import RolloutBackend, build_backend
from fleet.rpc import RpcDispatcher, RpcRegistry, default_registry
from fleet.stats import IngestStats
from fleet.store import Store
from fleet.writer import BatchWriter
from protocol.timefmt import utc_now
from protocol.topics import Topics

log = logging.getLogger(__name__)


class FleetService:
    """One fleet worker.

    ``signer`` (``CommandSigner``: ``sign(dict) -> dict``) signs every command and desired state
    before it is published (default ``UnsignedSigner``); ``desired`` (``DesiredService``) sets a
    device's signed desired state (release, config), which the maintenance thread re-signs before
    it expires; ``rpc_registry`` holds the city services devices reach
    through ``rpc/req`` (default: ``echo`` and ``time``); ``store`` replaces the ``Store`` built
    from ``config.db_url`` (the API, commands and the writer thread use it; a writer process opens
    its own). ``start()`` raises ``IngestError`` when the broker refuses; ``stop()`` drains.
    """

    def __init__(
        self,
        config: FleetConfig,
        *,
        signer: CommandSigner | None = None,
        rpc_registry: RpcRegistry | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix)
        self.stats = IngestStats()
        self.store = store or Store(config.db_url)
        self.store.silent_after_s = config.silent_after_s
        self.leases = Leases(self.store.writer, config.worker_id)
        self.signer: CommandSigner = signer or UnsignedSigner()
        self.rpc_registry = rpc_registry or default_registry()
        self.inventory = open_inventory(config.pki_dir, config.pki_db_url)
        self.crl_keeper: CrlKeeper | None = None
        if config.pki_dir is not None:
            self.crl_keeper = CrlKeeper(
                config.pki_dir, broker_dir=config.broker_dir, reload=reloader(config.broker_reload)
            )
        self.writer: BatchWriter | ProcessWriter
        if config.writer_process:
            self.writer = ProcessWriter(
                config, self.stats, retained_floor=utc_now(), on_lost=self._writer_lost
            )
        else:
            self.writer = BatchWriter(
                self.store,
                self.stats,
                interval_s=config.batch_interval_s,
                idle_s=config.batch_idle_s,
                max_items=config.batch_max,
                queue_max=config.queue_max,
                topics=self.topics,
                max_bytes=config.max_bytes_for,
                evidence=build_intake(config.data_dir, self.inventory),
            )
        self.rpc = RpcDispatcher(
            self.rpc_registry,
            self.publish,
            self.topics,
            workers=config.rpc_workers,
            timeout_s=config.rpc_timeout_s,
            on_outcome=self.stats.on_rpc,
        )
        raw_sink = None
        if isinstance(self.writer, ProcessWriter):
            raw_sink = self._accept_raw
        self.link = MqttLink(
            config, self.topics, self._accept, self.stats, self.rpc.submit, raw_sink=raw_sink
        )
        if isinstance(self.writer, ProcessWriter):
            self.writer.ack_raw = self.link.ack_tokens
        self.commands = CommandService(
            self.store,
            self.publish,
            self.signer,
            self.topics,
            default_ttl_s=config.command_ttl_s,
            max_ttl_s=config.command_max_ttl_s,
            on_issued=self.stats.on_command,
        )
        self.desired = DesiredService(self.store, self.publish_tracked, self.signer, self.topics)
        self.rollout_backend: RolloutBackend = build_backend(config, self.store.writer, self.desired)
        self._revocations: dict[str, tuple[datetime, str | None]] | None = None
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = False

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.link.publish(topic, payload, retain)

    def publish_tracked(self, topic: str, payload: bytes, retain: bool = False) -> object:
        """Publish QoS 1; returns paho's message info (``wait_for_publish``: acknowledged)."""
        return self.link.publish(topic, payload, retain)

    def _accept(self, received: Received) -> None:
        if not self._paused.is_set():  # while stopping, leave messages unacked for the next start
            self.writer.accept(received)

    def _accept_raw(
        self, token: int, topic: str, payload: bytes | bytearray, at: float, retained: bool
    ) -> None:
        if not self._paused.is_set():  # while stopping, leave messages unacked for the next start
            self.writer.accept_raw(token, topic, payload, at, retained)  # type: ignore[union-attr]

    def _writer_lost(self) -> None:
        self.link.force_reconnect()

    def start(self) -> FleetService:
        """Create the schema, start writing, connect and subscribe (raises IngestError)."""
        self.store.create_schema()
        self.writer.start()
        try:
            self.link.start()
        except Exception:
            self.writer.stop()
            raise
        self._spawn("fleet-maintenance", self._maintain)
        self._spawn("fleet-alerts", self._evaluate_alerts)
        self._spawn("fleet-rollouts", self._advance_rollouts)
        if self.config.retained_sync_s > 0:
            self._spawn("fleet-retained-sync", self._sync)
        self.started = True
        if self.inventory is None:
            log.warning(
                "no PKI inventory (--pki): every traffic.violation will be refused as bad_evidence, "
                "since no device key can be checked, and revoked devices are not marked"
            )
        log.info(
            "fleet worker %s up: group %s, broker %s, db %s",
            self.config.worker_id,
            self.config.group,
            self.config.broker_url,
            self.store.dialect,
        )
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sync(self) -> None:
        try:
            sync_retained(self.config, self.topics, self._accept)
        except Exception:  # supervisor boundary: the sync is an optimisation
            log.exception("retained sync failed")

    def sync_revocations(self) -> None:
        """Copy the devices the PKI has revoked into the registry (shown revoked, not online)."""
        if self.inventory is None:
            return
        revoked = self.inventory.revoked_devices()
        snapshot = {d: (r.revoked_at, r.reason) for d, r in revoked.items()}
        if snapshot != self._revocations:
            self.store.set_revocations(revoked.values())
            self._revocations = snapshot

    def certificate_expiry(self) -> dict[str, datetime]:
        """The newest unrevoked certificate's expiry of each device (empty without a PKI)."""
        if self.inventory is None:
            return {}
        expiry: dict[str, datetime] = {}
        for cert in self.inventory.all():
            if cert.kind == "device" and not cert.revoked:
                expiry[cert.subject] = max(cert.not_after, expiry.get(cert.subject, cert.not_after))
        return expiry

    def _leased(self, job: str, ttl_s: float) -> bool:
        """Whether this worker holds (now renewed) the lease of ``job`` (False if the database fails)."""
        try:
            return self.leases.acquire(job, ttl_s)
        except Exception as exc:  # supervisor boundary: the job waits for the next round
            log.warning("could not take the %s lease: %s", job, exc)
            return False

    def _evaluate_alerts(self) -> None:
        from fleet.alerts import AlertEngine
        from fleet.retention import Retention, housekeep

        retention = Retention(self.config.event_retention_days, self.config.telemetry_retention_days)
        interval = self.config.alert_interval_s
        engine: AlertEngine | None = None
        last_housekeeping = float("-inf")
        while not self._stop.wait(interval):
            if not self._leased("alerts", max(3 * interval, 15.0)):
                engine = None  # a fresh engine (event cursor) if this worker takes the job over
            else:
                try:
                    engine = engine or AlertEngine(self.store, certificates=self.certificate_expiry)
                    engine.evaluate()
                except Exception as exc:  # supervisor boundary: retried at the next interval
                    log.warning("could not evaluate alerts: %s", exc)
            due = time.monotonic() - last_housekeeping >= self.config.housekeeping_s
            if due and self._leased("retention", 900.0):
                last_housekeeping = time.monotonic()
                try:
                    for pruned in housekeep(self.store.writer, retention):
                        if pruned.rows_deleted or pruned.partitions_dropped:
                            log.info("retention: %s", pruned)
                except Exception as exc:  # supervisor boundary: retried at the next round
                    log.warning("could not apply the retention: %s", exc)

    def _advance_rollouts(self) -> None:
        """Advance every running staged rollout each second (fleet/rollouts), in a thread of its
        own: a backend that talks to a remote service (balenaCloud) cannot hold up the
        maintenance thread's expiry and re-signing. One worker at a time (the ``rollouts`` lease)."""
        from fleet.rollouts.driver import tick_all

        while not self._stop.wait(1.0):
            if not self._leased("rollouts", 15.0):
                continue
            try:
                tick_all(self.store.writer, self.rollout_backend, utc_now())
            except Exception as exc:  # supervisor boundary: retried next second
                log.warning("could not advance rollouts: %s", exc)

    def _maintain(self) -> None:
        last_log, last_total = time.monotonic(), 0
        last_crl = float("-inf")
        while not self._stop.wait(1.0):
            try:
                self.sync_revocations()
            except Exception as exc:  # supervisor boundary: retried next second
                log.warning("could not read revocations from the PKI inventory: %s", exc)
            crl_due = time.monotonic() - last_crl >= self.config.crl_check_s
            if self.crl_keeper is not None and crl_due and self._leased("crl", 2 * self.config.crl_check_s):
                last_crl = time.monotonic()
                try:
                    self.crl_keeper.tick()
                except Exception as exc:  # supervisor boundary: retried at the next check
                    log.error("could not re-sign the CRL (devices are locked out once it is stale): %s", exc)
            try:
                self.desired.tick()
            except Exception as exc:  # supervisor boundary: retried next second
                log.warning("could not re-sign desired states: %s", exc)
            if self._leased("maintenance", 15.0):
                self._maintenance_round()
            if time.monotonic() - last_log >= 10.0:
                total = self.stats.committed
                if total != last_total:
                    log.info(
                        "ingest: %.0f msg/s (5 s), %d committed, queue %d",
                        self.stats.rate(5.0),
                        total,
                        self.stats.queue_depth(),
                    )
                last_log, last_total = time.monotonic(), total

    def _maintenance_round(self) -> None:
        """The job of the ``maintenance`` lease: command expiry."""
        try:
            self.commands.expire(self.config.command_grace_s)
        except Exception as exc:  # supervisor boundary: retried next second
            log.warning("could not expire commands: %s", exc)

    def stop(self) -> None:
        """Stop taking messages, commit and acknowledge what was taken, then disconnect."""
        if not self.started:
            return
        self._paused.set()
        self._stop.set()
        self.writer.stop(flush=True)
        time.sleep(0.05)  # let the network thread write the last acknowledgements
        self.link.stop()
        self._finish()

    def abort(self) -> None:
        """Die as a crash would: nothing more is committed or acknowledged, no DISCONNECT."""
        if not self.started:
            return
        self._paused.set()
        self._stop.set()
        self.writer.stop(flush=False, timeout=2.0)
        self.link.client.loop_stop()
        sock = self.link.client.socket()
        if sock is not None:
            sock.close()
        self._finish(release=False)

    def _finish(self, *, release: bool = True) -> None:
        self.rpc.stop()
        for thread in self._threads:
            thread.join(timeout=5.0)
        if release:
            try:
                self.leases.release_all()  # another worker takes the jobs over at once
            except Exception as exc:  # supervisor boundary: the leases then expire by themselves
                log.warning("could not give the job leases back: %s", exc)
        self.store.dispose()
        if self.crl_keeper is not None:
            self.crl_keeper.close()
        if self.inventory is not None:
            self.inventory.dispose()
        self.started = False

    def health(self) -> dict[str, bool]:
        db_ok = True
        try:
            self.store.ping()
        except Exception:  # any failure means "not healthy"
            db_ok = False
        return {
            "db": db_ok,
            "broker": self.link.connected,
            "writer": self.writer.alive,
            "ok": db_ok and self.link.connected and self.writer.alive,
        }
