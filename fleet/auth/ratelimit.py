"""Failed sign-ins, limited per client address: after N failures in a window, 429 with Retry-After.

A sign-in attempt is a request that carries ``Authorization`` (an API token or an OIDC bearer
token), that reaches the OIDC callback, or that posts the sign-in form with an API token
(``POST /login``). ``SigninLimitMiddleware`` answers such a request 429 before it reaches the
application while its address is over the limit, and otherwise counts it as failed when the answer
is 401 (or, for the callback and the form, 400/401). Requests without credentials, and those of a
signed-in dashboard session, are neither counted nor refused.

The address is the TCP peer (``request.client``); behind a reverse proxy, start uvicorn with
``--proxy-headers --forwarded-allow-ips PROXY`` so it is the browser's, not the proxy's.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

CALLBACK_PATH = "/auth/callback"
LOGIN_PATH = "/login"


class SigninLimiter:
    """Sliding window of failure times per address (memory bounded by ``max_addresses``)."""

    def __init__(
        self,
        failures: int = 10,
        window_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        if failures < 1 or window_s <= 0:
            raise ValueError("failures must be at least 1 and window_s above 0")
        self.failures = failures
        self.window_s = window_s
        self.clock = clock
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None or len(times) < self.failures:
                return None
            return times[-self.failures] + self.window_s - now

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None:
                times = self._seen[address] = deque(maxlen=self.failures)
                while len(self._seen) > self.max_addresses:
                    self._seen.popitem(last=False)
            else:
                self._seen.move_to_end(address)
            times.append(now)


def _is_form_signin(scope: Scope) -> bool:
    return scope.get("path") == CALLBACK_PATH or (
        scope.get("path") == LOGIN_PATH and scope.get("method") == "POST"
    )


def _is_signin(scope: Scope) -> bool:
    if _is_form_signin(scope):
        return True
    return any(name == b"authorization" for name, _ in scope.get("headers", []))


def _failed(scope: Scope, status: int) -> bool:
    if _is_form_signin(scope):
        return status in (400, 401)
    return status == 401


class SigninLimitMiddleware:
    """Pure ASGI middleware in front of the application (see the module docstring)."""

    def __init__(self, app: ASGIApp, limiter: SigninLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_signin(scope):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = self.limiter.retry_after(address)
        if wait is not None:
            await _too_many(send, wait)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if _failed(scope, status):
            self.limiter.failed(address)


async def _too_many(send: Send, wait: float) -> None:
    seconds = max(1, math.ceil(wait))
    body = (
        b'{"detail":"too many failed sign-ins from this address: try again in '
        + str(seconds).encode()
        + b' s"}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(seconds).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_signin_limit(app: FastAPI, failures: int = 10, window_s: float = 300.0) -> SigninLimiter:
    """Put the limiter in front of everything else of ``app`` (call it after the other middlewares)."""
    limiter = SigninLimiter(failures, window_s)
    app.add_middleware(SigninLimitMiddleware, limiter=limiter)
    app.state.signin_limiter = limiter
    return limiter
