"""Assembly of the updater inside the agent: its parts from the configuration, the ``update``
command and the local API ops (``ota_status``, ``ota_check``, ``ota_lock``, ``ota_unlock``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from agent.commands import Handler
from agent.config import AgentConfig, OtaSection
from agent.errors import CommandFailed, ConfigError
from agent.localapi import LocalApiServer, Req
from agent.ota.errors import OtaError
from agent.ota.updater import Parts, Updater

TRUST_FILE = Path("trust") / "root.json"


def build_parts(config: AgentConfig) -> Parts:
    """The TUF client, object fetcher and slot installer for ``config.ota`` (ConfigError if unusable).

    Imported here, not at module level, so an agent with updates off never loads python-tuf."""
    from agent.ota.fetch import ObjectFetcher
    from agent.ota.slots import SlotInstaller
    from agent.ota.tufclient import ReleaseClient

    ota = config.ota
    if not ota.repository_url:
        raise ConfigError("ota.enabled is set but ota.repository_url is empty: name the fleet's /tuf/ URL")
    base = ota.repository_url if ota.repository_url.endswith("/") else ota.repository_url + "/"
    trusted = ota.trusted_root or ota.root / TRUST_FILE
    try:
        trusted_root = trusted.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"the TUF root of trust {trusted} cannot be read ({exc.strerror or exc}): "
            "install it at provisioning"
        ) from exc
    stop = threading.Event()
    tuf_dir = config.data_dir / "tuf"
    client = ReleaseClient(
        base, tuf_dir / "metadata", tuf_dir / "targets", trusted_root, timeout_s=ota.download_timeout_s
    )
    fetcher = ObjectFetcher(
        base + "targets/",
        timeout_s=ota.download_timeout_s,
        retries=ota.download_retries,
        rate_limit_bps=ota.rate_limit_bps,
        stop=stop,
    )
    installer = SlotInstaller(ota.root, margin_bytes=ota.free_space_margin_bytes)
    return Parts(client, fetcher, installer, ota.root / "staging" / "objects", stop)


class LockReq(Req):
    owner: str = Field(min_length=1, max_length=64, description="Who holds the lock, e.g. kiosk-session.")
    ttl_s: float = Field(default=600.0, gt=0, description="Seconds until the lock expires unless renewed.")


class UnlockReq(Req):
    owner: str = Field(min_length=1, max_length=64, description="The owner given when locking.")


class CheckReq(Req):
    force: bool = Field(default=False, description="Ignore locks, windows and an earlier failure.")


def add_local_ops(server: LocalApiServer, updater: Updater) -> None:
    server.add_op("ota_status", Req, lambda _r: updater.status())
    server.add_op("ota_check", CheckReq, lambda r: updater.check(r.force))
    server.add_op("ota_lock", LockReq, lambda r: {"granted_s": updater.gate.lock(r.owner, r.ttl_s)})
    server.add_op("ota_unlock", UnlockReq, lambda r: {"released": updater.gate.unlock(r.owner)})


def update_handler(updater: Callable[[], Updater | None]) -> Handler:
    """The ``update`` command: look at the repository now and install the desired release even if
    an app holds the lock, outside the windows, or after an earlier failure (``force``, default
    true)."""

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        current = updater()
        if current is None:
            raise CommandFailed("updates are not enabled on this device ([ota] enabled = false)")
        force = args.get("force", True)
        if not isinstance(force, bool):
            raise CommandFailed("args.force must be true or false")
        try:
            return current.check(force)
        except OtaError as exc:
            raise CommandFailed(str(exc)) from exc

    return handler


def ota_config(config: Callable[[], AgentConfig]) -> Callable[[], OtaSection]:
    return lambda: config().ota


def launched_root() -> Path | None:
    """The slot root when this process was started by the launcher."""
    root = os.environ.get("CITYEDGE_OTA_ROOT")
    return Path(root) if root else None
