"""City-services gateway mechanism: device ``rpc/req`` → a registered service → ``rpc/res``.

Services implement ``RpcService.call(method, params, device) -> dict`` and raise an
``RpcError`` subclass for the failures a device should hear about. Calls run in a thread pool;
one that takes longer than the timeout is answered ``timeout`` (its thread finishes on its own).
Every request gets exactly one answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from protocol.timefmt import now_ts
from protocol.topics import Topics

log = logging.getLogger(__name__)


class RpcError(Exception):
    """A service failed in a way the calling device should be told about."""

    code = "error"


class RpcBadRequest(RpcError):
    """The method or its parameters are wrong."""

    code = "bad_request"


class RpcNotFound(RpcError):
    """The thing asked for does not exist (e.g. no dossier with that number)."""

    code = "not_found"


class RpcUnavailable(RpcError):
    """The city system behind the service cannot be reached now; the device may retry."""

    code = "unavailable"


class RpcService(Protocol):
    """One city service reachable from devices by name."""

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]: ...


class RpcRegistry:
    """Services by name; the fleet answers requests for any other name with ``unknown_service``."""

    def __init__(self, services: Mapping[str, RpcService] | None = None) -> None:
        self._services: dict[str, RpcService] = dict(services or {})

    def register(self, name: str, service: RpcService) -> None:
        self._services[name] = service

    def get(self, name: str) -> RpcService | None:
        return self._services.get(name)

    def names(self) -> list[str]:
        return sorted(self._services)


class EchoService:
    """``echo.echo`` returns its params; ``echo.sleep`` waits ``seconds`` (tests the timeout)."""

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if method == "echo":
            return {"params": params, "device": device}
        if method == "sleep":
            time.sleep(float(params.get("seconds", 0)))
            return {"slept": params.get("seconds", 0)}
        if method == "fail":
            raise RpcUnavailable("echo was asked to fail")
        raise RpcBadRequest(f"echo has no method {method!r} (use echo, sleep or fail)")


class TimeService:
    """``time.now`` returns the city's clock (RFC 3339 UTC)."""

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if method != "now":
            raise RpcBadRequest(f"time has no method {method!r} (use now)")
        return {"now": now_ts()}


def default_registry() -> RpcRegistry:
    return RpcRegistry({"echo": EchoService(), "time": TimeService()})


Publish = Callable[[str, bytes], None]


class _Call:
    """One request in flight; ``claim`` lets exactly one of result/timeout answer it."""

    def __init__(self, device: str, request: dict[str, Any]) -> None:
        self.device = device
        self.request = request
        self.service = str(request["service"])
        self._lock = threading.Lock()
        self._answered = False

    def claim(self) -> bool:
        with self._lock:
            if self._answered:
                return False
            self._answered = True
            return True


class RpcDispatcher:
    """Runs requests on a pool and publishes exactly one answer per request."""

    def __init__(
        self,
        registry: RpcRegistry,
        publish: Publish,
        topics: Topics,
        *,
        workers: int = 8,
        timeout_s: float = 5.0,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.publish = publish
        self.topics = topics
        self.timeout_s = timeout_s
        self.on_outcome = on_outcome or (lambda service, outcome: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-rpc")

    def submit(self, device: str, request: dict[str, Any]) -> None:
        """Handle a validated ``rpc/req`` body from ``device`` (returns at once)."""
        call = _Call(device, request)
        service = self.registry.get(call.service)
        if service is None:
            known = ", ".join(self.registry.names()) or "none"
            self._answer(
                call, None, "unknown_service", f"unknown service {call.service!r} (available: {known})"
            )
            return
        try:
            future = self._pool.submit(
                service.call, str(request["method"]), dict(request.get("params") or {}), device
            )
        except RuntimeError:  # pool shut down: the fleet is stopping
            self._answer(call, None, "unavailable", "the fleet is shutting down; try again")
            return
        timer = threading.Timer(self.timeout_s, self._on_timeout, args=(call, future))
        timer.daemon = True
        timer.start()
        future.add_done_callback(lambda f: self._on_done(call, f, timer))

    def _on_done(self, call: _Call, future: Future[dict[str, Any]], timer: threading.Timer) -> None:
        timer.cancel()
        if future.cancelled():
            self._answer(call, None, "unavailable", "the fleet is shutting down; try again")
            return
        exc = future.exception()
        if exc is None:
            result = future.result()
            if isinstance(result, dict):
                self._answer(call, result, "ok", None)
            else:
                self._answer(call, None, "internal", f"service {call.service!r} returned a non-object")
        elif isinstance(exc, RpcError):
            self._answer(call, None, exc.code, str(exc) or exc.code)
        else:
            # The type only: a message could carry what the resident typed (personal data).
            log.error("rpc %s.%s failed with %s", call.service, call.request["method"], type(exc).__name__)
            self._answer(call, None, "internal", f"service {call.service!r} failed internally")

    def _on_timeout(self, call: _Call, future: Future[Any]) -> None:
        if not future.done():
            message = f"service {call.service!r} did not answer within {self.timeout_s:g}s"
            self._answer(call, None, "timeout", message)

    def _answer(self, call: _Call, result: dict[str, Any] | None, code: str, error: str | None) -> None:
        if not call.claim():
            return
        payload: dict[str, Any] = {"id": str(call.request["id"]), "ok": code == "ok"}
        if code == "ok":
            payload["result"] = result
        else:
            payload["error"], payload["code"] = error, code
        try:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            code = "internal"
            data = json.dumps(
                {"id": payload["id"], "ok": False, "code": code, "error": "result is not JSON"}
            ).encode()
        self.on_outcome(call.service, code)
        try:
            self.publish(self.topics.rpc_res(call.device), data)
        except Exception as exc:  # supervisor boundary: a failed publish must not kill the pool
            log.error("could not publish rpc answer to %s: %s", call.device, exc)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
