"""Requests to city services: ``rpc/req`` out, the matching ``rpc/res`` in.

Parameters and results may hold personal data (e.g. a dossier lookup): they are never logged
and never written to disk; only the service, method and request id are logged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from agent.errors import LinkDown, LocalApiError
from agent.link import Link
from protocol.models import RpcRequest, RpcResponse, decode

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    response: RpcResponse | None = None


class RpcClient:
    def __init__(self, link: Link, max_bytes: int) -> None:
        self.link = link
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._req_topic = link.topics.rpc_req(link.device_id)
        self._res_topic = link.topics.rpc_res(link.device_id)
        self.timeouts = 0

    def call(self, service: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its answer; LocalApiError on timeout or error."""
        request = RpcRequest(id=str(ULID()), service=service, method=method, params=params)
        pending = _Pending()
        with self._lock:
            self._pending[request.id] = pending
        try:
            try:
                self.link.publish(self._req_topic, request.to_bytes(), qos=1)
            except LinkDown as exc:
                raise LocalApiError(
                    "the agent is not connected to the city right now; try again later", code="offline"
                ) from exc
            if not pending.done.wait(timeout):
                self.timeouts += 1
                log.warning("rpc %s.%s (%s): no answer within %g s", service, method, request.id, timeout)
                raise LocalApiError(f"city service did not answer within {timeout:g} s", code="timeout")
        finally:
            with self._lock:
                self._pending.pop(request.id, None)
        response = pending.response
        assert response is not None
        if not response.ok:
            code = (response.model_extra or {}).get("code")
            raise LocalApiError(
                f"city service {service}.{method} failed: {response.error or 'no reason given'}",
                code=code if isinstance(code, str) else None,
            )
        return response.result or {}

    def handle_response(self, payload: bytes) -> None:
        """An ``rpc/res`` message (raises PayloadError when malformed)."""
        response = decode(RpcResponse, payload, topic=self._res_topic, max_bytes=self._max_bytes)
        with self._lock:
            pending = self._pending.get(response.id)
        if pending is None:
            log.info("rpc answer %s arrived after its caller gave up (or was never asked)", response.id)
            return
        pending.response = response
        pending.done.set()
