"""Test helpers for the object fetcher: a real HTTP server serving ``targets/objects/<sha256>`` from
a directory with ``Range`` support (and switchable misbehaviour), and a TCP proxy that cuts a
connection after a number of bytes."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
PREFIX = "/tuf/targets/objects/"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Behaviour:
    ignore_range: bool = False
    """Answer 200 with the whole object even when a Range is asked for."""
    fail_first: int = 0
    """Answer 503 to this many requests first."""
    endless: bool = False
    """Answer 200 without Content-Length and keep sending until the client goes away."""
    chunk: int = 4096
    """Bytes per write of a body (so a cut between writes is possible)."""


@dataclass
class Seen:
    path: str
    range: str | None
    status: int


@dataclass
class ObjectServer:
    """``ObjectServer(directory)``: serves ``directory/<sha256>`` at ``PREFIX<sha256>``."""

    directory: Path
    behaviour: Behaviour = field(default_factory=Behaviour)
    seen: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What ``ObjectFetcher`` takes: the repository's ``targets/`` URL."""
        return f"http://127.0.0.1:{self.port}/tuf/targets/"

    def put(self, data: bytes, name: str | None = None) -> str:
        digest = name or sha(data)
        (self.directory / digest).write_bytes(data)
        return digest

    def start(self) -> ObjectServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="objserver", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        self.seen.append(Seen(handler.path, handler.headers.get("Range"), status))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        if b.fail_first > 0:
            b.fail_first -= 1
            self._record(handler, 503)
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        name = handler.path[len(PREFIX) :] if handler.path.startswith(PREFIX) else ""
        path = self.directory / name
        if not name or "/" in name or not path.is_file():
            self._record(handler, 404)
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = path.read_bytes()
        if b.endless:
            self._record(handler, 200)
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
            with contextlib.suppress(OSError):
                while True:
                    handler.wfile.write(data or b"x" * b.chunk)
            return
        asked = handler.headers.get("Range")
        start = 0
        match = _RANGE.match(asked or "")
        if match and not b.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self._record(handler, 416)
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            self._record(handler, 206)
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self._record(handler, 200)
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        with contextlib.suppress(OSError):
            for offset in range(start, len(data), b.chunk):
                handler.wfile.write(data[offset : offset + b.chunk])


@contextlib.contextmanager
def object_server(directory: Path, behaviour: Behaviour | None = None) -> Iterator[ObjectServer]:
    server = ObjectServer(directory, behaviour or Behaviour()).start()
    try:
        yield server
    finally:
        server.stop()


class CutProxy:
    """TCP proxy to ``127.0.0.1:target``; the first connection is cut (both ways) after ``cut_after``
    bytes from the server have been passed on. ``forwarded[i]``: server bytes passed on connection i."""

    def __init__(self, target: int, cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self.forwarded: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="cutproxy", daemon=True).start()

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tuf/targets/"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            index = len(self.forwarded)
            self.forwarded.append(0)
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if index == 0 else None
            threading.Thread(target=self._pipe, args=(client, upstream, None, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, index, limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, index: int | None, limit: int | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and index is not None:
                    data = data[: limit - self.forwarded[index]]
                dst.sendall(data)
                if index is not None:
                    self.forwarded[index] += len(data)
                    if limit is not None and self.forwarded[index] >= limit:
                        break
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real small file system at ``directory`` (tmpfs of ``size``, e.g. "4m"), for ENOSPC tests.

    Needs root (``mount``); the test fails, clearly, where that is impossible rather than passing
    without having filled a disk."""
    import os
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a small tmpfs and needs root; run it as root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"could not mount a tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
