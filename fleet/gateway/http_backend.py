"""The city's real dossier service over HTTP(S), with a hard deadline inside the kiosk's budget.

``GET url`` where ``{code}`` in the URL is replaced by the URL-quoted code (otherwise
``?code=CODE`` is appended). A 200 answer is a JSON object in the ``protocol.dossier.Dossier``
shape (subclass and override :meth:`HttpDossierBackend.to_dossier` for another shape); 404 means
not found; timeouts, connection errors, 5xx, refused credentials and unreadable answers mean
upstream unavailable. The whole call, including a slowly dribbled body, ends by ``timeout_s``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from fleet.gateway.backends import DossierNotFound, UpstreamUnavailable
from fleet.rpc import RpcBadRequest
from protocol.dossier import Dossier

MAX_TIMEOUT_S = 4.0
"""The kiosk waits 5 s for an RPC answer; the gateway must answer before that."""
MAX_BODY_BYTES = 256 * 1024


def parse_auth_header(header: str | tuple[str, str] | None) -> dict[str, str]:
    """``"Authorization: Bearer x"`` or ``("Authorization", "Bearer x")`` → headers dict."""
    if header is None:
        return {}
    if isinstance(header, tuple):
        name, value = header
    else:
        name, sep, value = header.partition(":")
        if not sep:
            raise ValueError("auth header must look like 'Name: value' (e.g. 'Authorization: Bearer ...')")
    name, value = name.strip(), value.strip()
    if not name or not value:
        raise ValueError("auth header needs a name and a value")
    return {name: value}


class HttpDossierBackend:
    """Looks dossiers up in the city's service. Thread-safe; one pooled client per backend."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 3.0,
        auth_header: str | tuple[str, str] | None = None,
        *,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        max_in_flight: int = 16,
    ) -> None:
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] to answer within the kiosk's 5 s")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"dossier service URL must start with http:// or https:// (got {url!r})")
        self.url = url
        self.timeout_s = timeout_s
        self._client = httpx.Client(
            headers={"Accept": "application/json", **parse_auth_header(auth_header)},
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="dossier-http")

    def __repr__(self) -> str:  # never shows the credentials
        return f"HttpDossierBackend(url={self.url!r}, timeout_s={self.timeout_s:g})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def lookup(self, code: str) -> Dossier:
        """The dossier, or DossierNotFound / UpstreamUnavailable — always within ``timeout_s``.

        httpx timeouts bound each phase (connect, each read), not their sum, so the request runs
        on a worker thread and the caller stops waiting at the deadline; the worker then ends on
        its own within one more phase timeout.
        """
        deadline = time.monotonic() + self.timeout_s
        try:
            future = self._pool.submit(self._fetch, code, deadline)
        except RuntimeError as exc:  # closed
            raise UpstreamUnavailable("dossier backend is shutting down") from exc
        try:
            status, body = future.result(timeout=self.timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            raise UpstreamUnavailable(
                f"dossier service did not answer within {self.timeout_s:g}s; try again later"
            ) from exc
        self._check_status(status)
        return self.to_dossier(self._json(body), code)

    def _fetch(self, code: str, deadline: float) -> tuple[int, bytes]:
        target = self.url.replace("{code}", quote(code, safe=""))
        params = None if "{code}" in self.url else {"code": code}
        try:
            with self._client.stream("GET", target, params=params) as response:
                return response.status_code, self._read(response, deadline)
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(
                f"dossier service did not answer within {self.timeout_s:g}s; try again later"
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"cannot reach the dossier service ({type(exc).__name__}); try again later"
            ) from exc

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise UpstreamUnavailable(f"dossier service answer is over {MAX_BODY_BYTES} bytes")
            if time.monotonic() > deadline:
                raise UpstreamUnavailable(f"dossier service answer took over {self.timeout_s:g}s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_status(self, status: int) -> None:
        if status == 200:
            return
        if status == 404:
            raise DossierNotFound("no dossier with this code / không tìm thấy hồ sơ có mã này")
        if status in (400, 422):
            raise RpcBadRequest(f"dossier service refused the code (HTTP {status})")
        if status in (401, 403):
            raise UpstreamUnavailable(f"dossier service refused the gateway's credentials (HTTP {status})")
        raise UpstreamUnavailable(f"dossier service failed (HTTP {status}); try again later")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise UpstreamUnavailable("dossier service answered something that is not JSON") from exc

    def to_dossier(self, obj: Any, code: str) -> Dossier:
        """Map the service's answer to a Dossier (override for another shape)."""
        if not isinstance(obj, dict):
            raise UpstreamUnavailable("dossier service answer is not a JSON object")
        try:
            return Dossier.model_validate({"code": code, **obj})
        except ValidationError as exc:
            field = ".".join(str(p) for p in exc.errors()[0]["loc"])
            raise UpstreamUnavailable(f"dossier service answer has a bad field '{field}'") from exc
