"""The agent's local API: Unix socket ``DATA_DIR/agent.sock`` (mode 0660), one JSON object per line.

Requests ``{"op": ..., ...}``, answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"..."}``. Ops: ``emit`` (kind, data, sign) → ``{"id","seq"}`` once durable; ``rpc`` (service,
method, params, timeout); ``report_metrics`` (metrics); ``report_peripherals`` (peripherals);
``desired_config``; ``status``. A bad request gets an error answer and never stops the server.

``LocalApiClient`` is what apps on the device use; it opens one connection per call.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import describe_validation
from agent.errors import AgentError, LocalApiError
from agent.guard import Guard

log = logging.getLogger(__name__)

SOCKET_NAME = "agent.sock"
_MAX_UNIX_PATH = 107


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SOCKET_NAME


class Backend(Protocol):
    def emit(self, kind: str, data: dict[str, Any], sign: bool) -> dict[str, Any]: ...
    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def report_metrics(self, metrics: dict[str, Any]) -> None: ...
    def report_peripherals(self, peripherals: dict[str, Any]) -> None: ...
    def desired_config(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: str = Field(description="Operation name.")


class EmitReq(Req):
    kind: str = Field(description="Event kind, e.g. kiosk.session or traffic.violation.")
    data: dict[str, Any] = Field(description="Event data (a JSON object).")
    sign: bool = Field(default=False, description="Sign the envelope with the device key.")


class RpcReq(Req):
    service: str = Field(min_length=1, max_length=64, description="City service name.")
    method: str = Field(min_length=1, max_length=64, description="Method of that service.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters (never logged).")
    timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for the answer.")


class MetricsReq(Req):
    metrics: dict[str, Any] = Field(description="Role metrics merged into telemetry.")


class PeripheralsReq(Req):
    peripherals: dict[str, Any] = Field(description="Merged into shadow/reported.peripherals.")


class LocalApiServer:
    def __init__(
        self,
        data_dir: Path,
        backend: Backend,
        guard: Guard,
        *,
        mode: int = 0o660,
        max_request_bytes: int = 1024 * 1024,
        rpc_timeout_max_s: float = 60.0,
    ) -> None:
        self.path = socket_path(data_dir)
        if len(os.fsencode(self.path)) > _MAX_UNIX_PATH:
            raise LocalApiError(
                f"socket path {self.path} is too long for a Unix socket; use a shorter data dir"
            )
        self.backend = backend
        self._guard = guard
        self._mode = mode
        self._max = max_request_bytes
        self._rpc_max = rpc_timeout_max_s
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept_loop, name="local-api", daemon=True)
        self.requests = 0
        self.bad_requests = 0
        self._ops: dict[str, tuple[type[Req], Callable[[Any], Any]]] = {
            "emit": (EmitReq, lambda r: backend.emit(r.kind, r.data, r.sign)),
            "rpc": (RpcReq, self._rpc),
            "report_metrics": (MetricsReq, lambda r: backend.report_metrics(r.metrics)),
            "report_peripherals": (PeripheralsReq, lambda r: backend.report_peripherals(r.peripherals)),
            "desired_config": (Req, lambda _r: backend.desired_config()),
            "status": (Req, lambda _r: backend.status()),
        }

    def add_op(self, name: str, model: type[Req], fn: Callable[[Any], Any]) -> None:
        """Serve one more op (a part such as the updater adds its own: ``ota_status``, ...)."""
        self._ops[name] = (model, fn)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # stale socket of a previous run (the data dir is locked)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, self._mode)
        sock.listen(64)
        self._sock = sock
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:  # wake the accept() call
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                    poke.connect(str(self.path))
            except OSError:
                pass
            self._thread.join(5)
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("local API: accept failed: %s", exc)
                continue
            if self._stop.is_set():
                conn.close()
                return
            threading.Thread(target=self._serve, args=(conn,), name="local-api-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while not self._stop.is_set():
                try:
                    line = reader.readline(self._max + 1)
                except OSError:
                    return
                if not line:
                    return
                too_long = len(line) > self._max
                answer = (
                    self._error(f"request is larger than {self._max} bytes")
                    if too_long
                    else self.answer(line)
                )
                try:
                    conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
                except OSError:
                    return
                if too_long:
                    return

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line (never raises)."""
        self.requests += 1
        out = self._guard("local API request", lambda: self._answer(line))
        return out if out is not None else self._error("internal error in the agent (see its log)")

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return self._error("request is not valid JSON (send one JSON object per line)")
        if not isinstance(obj, dict):
            return self._error(f"request must be a JSON object, not {type(obj).__name__}")
        op = obj.get("op")
        entry = self._ops.get(op) if isinstance(op, str) else None
        if entry is None:
            return self._error(f"unknown op {op!r}; use one of {', '.join(sorted(self._ops))}")
        model, fn = entry
        try:
            request = model.model_validate(obj)
        except ValidationError as exc:
            return self._error(f"bad {op} request: {describe_validation(exc)}")
        try:
            result = fn(request)
        except AgentError as exc:
            return self._error(str(exc), code=getattr(exc, "code", None))
        return {"ok": True, "result": result}

    def _rpc(self, req: RpcReq) -> dict[str, Any]:
        timeout = min(req.timeout, self._rpc_max)
        return self.backend.rpc(req.service, req.method, req.params, timeout)

    def _error(self, message: str, *, code: str | None = None) -> dict[str, Any]:
        self.bad_requests += 1
        answer: dict[str, Any] = {"ok": False, "error": message}
        if code is not None:
            answer["code"] = code
        return answer


class LocalApiClient:
    """Client of the agent's local API (one connection per call; thread-safe)."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = socket_path(data_dir)
        self.timeout = timeout

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        """Store an event durably in the outbox; returns ``{"id", "seq"}``."""
        result = self._call({"op": "emit", "kind": kind, "data": data, "sign": sign})
        return dict(result)

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        request = {"op": "rpc", "service": service, "method": method, "params": params, "timeout": timeout}
        return dict(self._call(request, timeout + 5.0))

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        self._call({"op": "report_metrics", "metrics": metrics})

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        self._call({"op": "report_peripherals", "peripherals": peripherals})

    def desired_config(self) -> dict[str, Any]:
        return dict(self._call({"op": "desired_config"}))

    def status(self) -> dict[str, Any]:
        return dict(self._call({"op": "status"}))

    def poll_command(self, names: list[str], timeout: float = 5.0) -> dict[str, Any] | None:
        """The next city command relayed to this role process (agent/rolerelay.py), or None."""
        found = self._call({"op": "poll_command", "names": names, "timeout": timeout}, timeout + 5.0)
        return dict(found) if found else None

    def command_result(self, command_id: str, status: str, result: dict[str, Any], error: str | None) -> None:
        """Answer a command received from ``poll_command``."""
        answer = {"id": command_id, "status": status, "result": result, "error": error}
        self._call({"op": "command_result", **answer})

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Any op by name, e.g. ``call("ota_lock", owner="kiosk-session", ttl_s=600)``."""
        return self._call({"op": op, **fields}, timeout)

    def _call(self, request: dict[str, Any], timeout: float | None = None) -> Any:
        try:
            line = json.dumps(request, allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise LocalApiError(f"request is not plain JSON: {exc}") from exc
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout or self.timeout)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise LocalApiError(
                    f"the cityedge agent is not running (no agent listening at {self.path})"
                ) from exc
            except OSError as exc:
                raise LocalApiError(f"cannot reach the agent at {self.path}: {exc.strerror or exc}") from exc
            try:
                sock.sendall(line)
                with sock.makefile("rb") as reader:
                    reply = reader.readline()
            except TimeoutError as exc:
                raise LocalApiError(f"the agent did not answer within {timeout or self.timeout:g} s") from exc
            except OSError as exc:
                raise LocalApiError(f"connection to the agent failed: {exc.strerror or exc}") from exc
        if not reply:
            raise LocalApiError("the agent closed the connection without answering (is it stopping?)")
        answer = json.loads(reply)
        if not answer.get("ok"):
            code = answer.get("code")
            raise LocalApiError(
                str(answer.get("error") or "the agent refused the request"),
                code=code if isinstance(code, str) else None,
            )
        return answer.get("result")
