"""Helpers for tests that need a real release repository: small bundles from a dict of files, a
repository with keys, publishing, and the repository served over real HTTP on a free port.

Typical use::

    with served_repo(tmp_path) as repo:            # init + serve; repo.url ends in /tuf/
        repo.publish("1.0.0", {"app/hello.txt": b"hi"})
        client = repo.client(tmp_path / "device")  # a ReleaseClient trusting the first root
        client.refresh()

Without context managers: ``init_test_repo``, ``publish_bundle`` and ``RepoServer(dir).start()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ota.tufclient import ReleaseClient
from fleet.broker import free_port
from fleet.releases.bundle import build_bundle
from fleet.releases.repo import init_repo, publish
from protocol.release import ReleaseManifest


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def make_bundle(
    workdir: Path,
    version: str,
    files: dict[str, bytes],
    *,
    modes: dict[str, int] | None = None,
    **options: Any,
) -> Path:
    """Build ``workdir/<version>.tar`` from ``{slot path: content}`` (no project wheel)."""
    src = workdir / f"src-{version}"
    sources: list[tuple[str, Path]] = []
    for index, (slot, content) in enumerate(sorted(files.items())):
        local = src / f"{index}.bin"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        local.chmod((modes or {}).get(slot, 0o644))
        sources.append((slot, local))
    out = workdir / f"{version}.tar"
    build_bundle(version, out, sources=sources, project_wheel=False, **options)
    return out


@dataclass
class Repo:
    """A release repository on disk with its offline keys, optionally served (``url``)."""

    dir: Path
    offline: Path
    work: Path
    url: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def targets_keys(self) -> list[Path]:
        return sorted(self.offline.glob("targets-*.pem"))

    @property
    def root_keys(self) -> list[Path]:
        return sorted(self.offline.glob("root-*.pem"))

    @property
    def first_root(self) -> bytes:
        return (self.dir / "metadata" / "1.root.json").read_bytes()

    def bundle(self, version: str, files: dict[str, bytes], **options: Any) -> Path:
        return make_bundle(self.work, version, files, **options)

    def publish(self, version: str, files: dict[str, bytes], **options: Any) -> ReleaseManifest:
        """Build and publish a release; returns its manifest."""
        from fleet.releases.bundle import read_bundle

        bundle = self.bundle(version, files, **options)
        publish(self.dir, bundle, self.targets_keys)
        return read_bundle(bundle)[0]

    def client(self, device_dir: Path, **options: Any) -> ReleaseClient:
        """A device's ReleaseClient that trusts this repository's first root."""
        assert self.url, "serve the repository first (served_repo)"
        return ReleaseClient(
            self.url, device_dir / "metadata", device_dir / "targets", self.first_root, **options
        )


def make_repo(base: Path, **init_options: Any) -> Repo:
    """A new repository at ``base/repo`` with offline keys in ``base/offline``."""
    repo = Repo(base / "repo", base / "offline", base / "work")
    repo.work.mkdir(parents=True, exist_ok=True)
    repo.info = init_repo(repo.dir, repo.offline, **init_options)
    return repo


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="HTTP server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def serve_repo(repo_dir: Path) -> Iterator[str]:
    """Serve ``repo_dir`` with the fleet's release routes on a free loopback port; yields the
    repository URL (``http://127.0.0.1:PORT/tuf/``)."""
    from fastapi import FastAPI

    from fleet.releases.serve import releases_router

    app = FastAPI()
    app.include_router(releases_router(repo_dir))
    with serve_app(app) as base:
        yield f"{base}/tuf/"


@contextlib.contextmanager
def served_repo(base: Path, **init_options: Any) -> Iterator[Repo]:
    """``make_repo`` + ``serve_repo``: a served repository, stopped afterwards."""
    repo = make_repo(base, **init_options)
    with serve_repo(repo.dir) as url:
        repo.url = url
        yield repo


# --- plain-function forms (for helpers that do not use context managers) -----------------------


def init_test_repo(workdir: Path, **init_options: Any) -> tuple[Path, Path]:
    """A new repository at ``workdir/repo``; returns (repository folder, offline key folder)."""
    repo = make_repo(workdir, **init_options)
    return repo.dir, repo.offline


def publish_bundle(repo_dir: Path, offline: Path, bundle: Path) -> dict[str, Any]:
    """Publish ``bundle`` with every targets key in ``offline``."""
    return publish(repo_dir, bundle, sorted(offline.glob("targets-*.pem")))


class RepoServer:
    """``serve_repo`` as an object: ``RepoServer(dir).start()``, ``.url``, ``.stop()``."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir
        self.url = ""
        self._stack = contextlib.ExitStack()

    def start(self) -> RepoServer:
        self.url = self._stack.enter_context(serve_repo(self.repo_dir))
        return self

    def stop(self) -> None:
        self._stack.close()
