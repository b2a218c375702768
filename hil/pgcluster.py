"""A throwaway PostgreSQL cluster for tests and benchmarks (never the machine's own server).

``initdb`` into a private temporary directory, ``pg_ctl start`` on a free port, listening only on
a Unix socket inside that directory. As root, every PostgreSQL command runs as the ``postgres``
OS user (PostgreSQL refuses to run as root), and the directory belongs to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from fleet.broker import free_port


class PgError(RuntimeError):
    """The throwaway cluster could not be created or started."""


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: from PATH, else /usr/lib/postgresql/*/bin."""
    candidates = [shutil.which("initdb")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for candidate in candidates:
        if candidate:
            bindir = Path(candidate).resolve().parent
            if (bindir / "pg_ctl").exists():
                return bindir
    return None


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cityedge-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgError("running as root but there is no 'postgres' user to run PostgreSQL") from exc
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr}{tail}")

    def start(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._options = options = (
            f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start"
        )
        return self

    def outage(self, seconds: float) -> None:
        """Stop the server (clients lose their connections), wait, start it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(seconds)
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options, "-l", log, "-w", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        name = f"fleet_{uuid.uuid4().hex[:12]}"
        import psycopg

        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def terminate_connections(self, url: str) -> int:
        """Kill every server process serving the database of ``url`` (a database outage)."""
        import psycopg

        dbname = url.split("/")[-1].split("?")[0]
        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchall()
        return len(rows)
