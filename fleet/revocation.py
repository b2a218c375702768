"""Revocation in one step: revoke in the PKI, publish the CRL and ACL, reload the broker, kick.

What mosquitto 2.0.11 does (checked by ``tests/security/test_sec_broker_tls.py``):

- SIGHUP re-reads the ``crlfile``; a revoked certificate cannot open a new TLS connection
  afterwards. No restart is needed.
- SIGHUP does **not** close connections that are already open, and does not reload the access
  list (mosquitto's dynamic-security plugin reads its file only at start). With a broker admin
  identity (``kick_via``), the revoked identity is deleted from the running broker's access list
  (``fleet.brokerconf.BrokerAccess.update``): the plugin disconnects it and it has no rights left;
  ``kick`` then also takes over its client id from the fleet listener (MQTT session takeover, clean
  start) so that its session is gone; its reconnection fails the TLS handshake.
- The revoked device's will is published under its own (now denied) identity, so its retained
  ``status`` keeps saying ``online: true``: the fleet registry must show revoked devices as such.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.brokerconf import BrokerAccess, refresh_broker_files
from fleet.dynsec import BrokerAccessError, BrokerEndpoint
from fleet.pki import CityPKI, PKIError
from fleet.pki_store import IssuedCert


class ReloadError(PKIError):
    """The broker could not be told to reload (the revocation itself is done)."""


@dataclass
class RevocationReport:
    target: str
    revoked: list[IssuedCert]
    broker_files_updated: bool = False
    broker_reloaded: bool = False
    access_updated: bool = False
    kicked: bool | None = None
    problems: list[str] = field(default_factory=list)


def reload_by_pidfile(pidfile: Path) -> None:
    """SIGHUP the broker whose pid is in ``pidfile``."""
    try:
        pid = int(Path(pidfile).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise ReloadError(f"cannot signal the broker from {pidfile}: {exc}") from exc


def reload_by_systemd(unit: str = "mosquitto") -> None:
    """``systemctl reload UNIT`` (the Debian unit sends SIGHUP)."""
    try:
        subprocess.run(["systemctl", "reload", unit], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ReloadError(f"systemctl reload {unit} failed: {exc}") from exc


@dataclass(frozen=True)
class KickVia:
    """How to reach the broker's fleet listener with a service identity (for ``kick``)."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path


def kick(via: KickVia, client_id: str, timeout: float = 5.0) -> bool:
    """Close the broker connection of ``client_id`` by taking over its session (clean start),
    then leave; True when the takeover was accepted."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(via.ca), certfile=str(via.cert), keyfile=str(via.key))
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(c: mqtt.Client, u: object, flags: object, rc: object, props: object) -> None:
        ok.append(not getattr(rc, "is_failure", True))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(via.host, via.port, clean_start=True)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return bool(ok and ok[0])


def revoke_everywhere(
    pki: CityPKI,
    target: str,
    reason: str,
    *,
    note: str = "",
    broker_dir: Path | None = None,
    reload: Callable[[], None] | None = None,
    kick_via: KickVia | None = None,
) -> RevocationReport:
    """Revoke ``target`` (device id, service name or 0x-serial), refresh the broker's CRL + ACL
    in ``broker_dir``, reload the broker and kick a still-connected client. Steps after the PKI
    revocation report problems instead of raising: the revocation itself is never undone."""
    report = RevocationReport(target=target, revoked=pki.revoke(target, reason, note=note))
    if broker_dir is not None:
        try:
            refresh_broker_files(pki, broker_dir)
            report.broker_files_updated = True
        except OSError as exc:
            report.problems.append(f"could not update the broker files in {broker_dir}: {exc}")
    if reload is not None:
        try:
            reload()
            report.broker_reloaded = True
        except ReloadError as exc:
            report.problems.append(str(exc))
    if kick_via is not None and broker_dir is not None:
        endpoint = BrokerEndpoint(kick_via.host, kick_via.port, kick_via.ca, kick_via.cert, kick_via.key)
        try:
            BrokerAccess(pki, broker_dir, endpoint=endpoint).update(
                {r.subject for r in report.revoked} or {target}
            )
            report.access_updated = True
        except (BrokerAccessError, OSError, ValueError) as exc:
            report.problems.append(f"could not update the broker's access list: {exc}")
    if kick_via is not None and not target.startswith("0x"):
        report.kicked = kick(kick_via, target)
        if not report.kicked:
            report.problems.append(f"could not kick {target} through {kick_via.host}:{kick_via.port}")
    return report
