"""A small client of the fleet REST API (used by the ``cityedge fleet`` commands).

Every request carries ``Authorization: Bearer TOKEN``: an API token (``cityedge fleet token
create``) from ``--token-file PATH`` (mode 0600) or the ``CITYEDGE_TOKEN`` environment variable.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API = "http://127.0.0.1:8080"
FINAL = ("ok", "error", "rejected", "expired")
TOKEN_ENV = "CITYEDGE_TOKEN"


class FleetApiError(RuntimeError):
    """The fleet API could not be reached or refused the request."""


class TokenFileError(FleetApiError):
    """The token file cannot be used (missing, empty, or readable by others)."""


def read_token_file(path: Path) -> str:
    """The token in ``path``, refused unless only its owner can read it (mode 0600 or 0400)."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileError(
                f"token file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
                f"a token is a password: run `chmod 600 {path}` and try again"
            )
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise TokenFileError(
            f"token file {path} is empty; put the token from `cityedge fleet token create` in it"
        )
    return token


def load_token(token_file: Path | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The API token: from ``token_file`` when given, else ``CITYEDGE_TOKEN``; None if neither."""
    if token_file is not None:
        return read_token_file(token_file)
    value = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return value or None


class FleetClient:
    def __init__(
        self, base_url: str = DEFAULT_API, timeout: float = 10.0, *, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self._has_token = bool(token)

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
            raise FleetApiError(f"fleet API answered {response.status_code}: {detail}{self._hint(response)}")
        return response.json()

    def _hint(self, response: httpx.Response) -> str:
        if response.status_code == 401 and not self._has_token:
            return (
                f" (give an API token: {TOKEN_ENV}=... or --token-file PATH; `cityedge fleet token create`)"
            )
        if response.status_code == 401:
            return (
                " (the token was not accepted: check it has not expired or been revoked: `fleet token list`)"
            )
        if response.status_code == 403:
            return " (the token's role may not do this; ask for a token with a role that may)"
        return ""

    def devices(
        self, *, role: str | None = None, online: bool | None = None, page_size: int = 1000, **filters: str
    ) -> list[dict[str, Any]]:
        """Every device matching the filter, fetched a page at a time (the API pages its answer)."""
        params: dict[str, Any] = {"limit": page_size, **filters}
        if role is not None:
            params["role"] = role
        if online is not None:
            params["online"] = str(online).lower()
        result: list[dict[str, Any]] = []
        while True:
            page: list[dict[str, Any]] = self._request("GET", "/api/devices", params=params)
            result += page
            if len(page) < page_size:
                return result
            params["offset"] = len(result)

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

    def alerts(
        self, *, open_only: bool = True, kind: str | None = None, device: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"open": str(open_only).lower(), "limit": limit}
        params.update({k: v for k, v in {"kind": kind, "device": device}.items() if v})
        result: list[dict[str, Any]] = self._request("GET", "/api/alerts", params=params)
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
