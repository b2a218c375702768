"""``cityedge fleet serve`` as a real process for simulator tests: started, killed, started again
on the same database, with an admin token and desired states signed by its key ring."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sim_helpers import wait_until
from sqlalchemy import Engine, select

from fleet.auth.tokens import create_token
from fleet.broker import MosquittoBroker, free_port
from fleet.db import devices, make_engine, rollout_targets
from fleet.keys_cli import init_keys

CLI = str(Path(sys.executable).with_name("cityedge"))


class FleetProcess:
    def __init__(self, broker: MosquittoBroker, workdir: Path) -> None:
        self.api = ""
        self.db_url = f"sqlite:///{workdir / 'db' / 'fleet.db'}"
        data = workdir / "fleet"
        init_keys(data, workdir / "offline" / "fleet-root.pem")
        self.args = [CLI, "fleet", "serve", "--broker", broker.url, "--db", self.db_url,
                     "--worker-id", "fleet-rollouts",
                     "--data-dir", str(data), "--signer", "fleet.signer:load_fleet_signer"]  # fmt: skip
        self.env = {**os.environ, "CITYEDGE_FLEET_DATA": str(data)}
        self.log = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        token = create_token(self.db_url, "admin", "rollout-test", "1h")
        self.headers = {"Authorization": f"Bearer {token}"}
        self._engine: Engine | None = None

    def start(self) -> FleetProcess:
        """Start on a fresh port each time: on a busy machine another program may take a port
        between ``free_port`` and the bind, or the old one after a kill (then try another)."""
        for _attempt in range(5):
            port = free_port()
            self.api = f"http://127.0.0.1:{port}"
            with self.log.open("ab") as log:
                argv = [*self.args, "--http", f"127.0.0.1:{port}"]
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            wait_until(self._up_or_exited, 60, f"fleet serve up (log: {self.log})")
            if self.proc.poll() is None:
                return self
            if "address already in use" not in self.log.read_text():
                raise AssertionError(f"fleet serve exited: {self.log.read_text()[-2000:]}")
        raise AssertionError(f"fleet serve found no free port: {self.log.read_text()[-2000:]}")

    def _up_or_exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or self._healthy()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.api}{path}", headers=self.headers, timeout=30, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def kill(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._engine is not None:
            self._engine.dispose()

    # -- reading its database (WAL: readers do not disturb it) -----------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def targets(self, rollout_id: str) -> dict[str, tuple[int, Any]]:
        """device -> (wave, targeted_at) of every planned device."""
        query = select(rollout_targets.c.device, rollout_targets.c.wave, rollout_targets.c.targeted_at).where(
            rollout_targets.c.rollout == rollout_id
        )
        with self.engine.connect() as conn:
            return {row.device: (row.wave, row.targeted_at) for row in conn.execute(query)}

    def desired(self) -> dict[str, Any]:
        """device -> stored signed desired state (or None)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(devices.c.id, devices.c.shadow_desired)).all())
