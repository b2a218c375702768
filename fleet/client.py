"""A small client of the fleet REST API (used by the ``cityedge fleet`` commands)."""

from __future__ import annotations

import time
from typing import Any

import httpx

DEFAULT_API = "http://127.0.0.1:8080"
FINAL = ("ok", "error", "rejected", "expired")


class FleetApiError(RuntimeError):
    """The fleet API could not be reached or refused the request."""


class FleetClient:
    def __init__(self, base_url: str = DEFAULT_API, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetApiError(
                f"cannot reach the fleet API at {self.base_url} ({exc}); is `cityedge fleet serve` "
                "running? Set --api or CITYEDGE_FLEET_URL."
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise FleetApiError(f"fleet API answered {response.status_code}: {detail}")
        return response.json()

    def devices(self, *, role: str | None = None, online: bool | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if role is not None:
            params["role"] = role
        if online is not None:
            params["online"] = str(online).lower()
        result: list[dict[str, Any]] = self._request("GET", "/api/devices", params=params)
        return result

    def events(self, device: str, *, limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if kind is not None:
            params["kind"] = kind
        result: list[dict[str, Any]] = self._request("GET", f"/api/devices/{device}/events", params=params)
        return result

    def send_command(self, device: str, name: str, args: dict[str, Any], ttl_s: float | None = None) -> str:
        body: dict[str, Any] = {"name": name, "args": args}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return str(self._request("POST", f"/api/devices/{device}/commands", json=body)["id"])

    def set_release(
        self,
        device: str,
        version: str,
        *,
        target: str | None = None,
        allow_downgrade: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        """Ask ``device`` to run ``version``; returns the signed desired state."""
        body: dict[str, Any] = {"version": version, "allow_downgrade": allow_downgrade, "force": force}
        if target is not None:
            body["target"] = target
        result: dict[str, Any] = self._request("PUT", f"/api/devices/{device}/release", json=body)
        return result

    def clear_release(self, device: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("DELETE", f"/api/devices/{device}/release")
        return result

    def desired(self, device: str) -> dict[str, Any]:
        """Desired state, running version, applied version and latest OTA state of ``device``."""
        result: dict[str, Any] = self._request("GET", f"/api/devices/{device}/desired")
        return result

    def command(self, command_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/commands/{command_id}")
        return result

    def wait_command(self, command_id: str, timeout: float, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the command is answered (or expired) or ``timeout`` passes; return its state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.command(command_id)
            if state["status"] in FINAL or time.monotonic() >= deadline:
                return state
            time.sleep(poll_s)
