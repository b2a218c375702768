"""A stand-in for the balenaCloud API (v7, OData through pine) at the HTTP level, for ``responses``.

It answers the requests balena-sdk 17 makes for what the balena rollout backend uses (application
by slug, releases by raw version or commit, devices by fleet / uuid / uuid list with ``$expand``,
PATCH of ``is_pinned_on__release``) in the shape balenaCloud answers them: ``{"d": [...]}`` with
``__metadata``, navigation properties as ``{"__id": N}`` unless expanded, expanded ones as lists.
It keeps every request, so a test can check what was sent. ``settle`` plays the balena supervisor:
a device moves to the release it is pinned to.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import responses

API = "https://api.balena-cloud.com/v7"


@dataclass
class Release:
    id: int
    commit: str
    raw_version: str
    status: str = "success"


@dataclass
class Device:
    id: int
    uuid: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    running: int | None = None  # release id
    pinned: int | None = None
    overall_status: str = "operational"
    heartbeat: str = "online"
    download_progress: int | None = None


@dataclass
class Sent:
    method: str
    path: str
    query: str
    body: Any
    authorization: str | None


class BalenaCloud:
    def __init__(self, slug: str = "cityedge/kiosks", app_id: int = 1901) -> None:
        self.slug = slug
        self.app_id = app_id
        self.releases: list[Release] = []
        self.devices: list[Device] = []
        self.requests: list[Sent] = []
        self.refuse: int | None = None  # answer every request with this status (401, 503...)

    # -- the test's side ------------------------------------------------------------------------

    def release(self, raw_version: str, status: str = "success") -> Release:
        number = len(self.releases) + 1
        commit = hashlib.md5(raw_version.encode()).hexdigest()  # balena commits: 32 hex digits
        found = Release(id=3000 + number, commit=commit, raw_version=raw_version, status=status)
        self.releases.append(found)
        return found

    def device(self, name: str, running: Release, *, pinned: Release | None = None, **tags: str) -> Device:
        number = len(self.devices) + 1
        uuid = f"{number:04d}" + "ab" * 14
        found = Device(
            id=100 + number,
            uuid=uuid,
            name=name,
            tags=tags,
            running=running.id,
            pinned=pinned.id if pinned else None,
        )
        self.devices.append(found)
        return found

    def by_uuid(self, uuid: str) -> Device:
        return next(d for d in self.devices if d.uuid == uuid)

    def release_by_id(self, release_id: int | None) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def settle(self, uuid: str, overall_status: str = "operational") -> None:
        """The supervisor of ``uuid`` has moved to the release it is pinned to."""
        device = self.by_uuid(uuid)
        if device.pinned is not None:
            device.running = device.pinned
        device.overall_status = overall_status
        device.download_progress = None

    def patches(self) -> list[Sent]:
        return [r for r in self.requests if r.method == "PATCH"]

    # -- the API's side -------------------------------------------------------------------------

    def install(self, mock: responses.RequestsMock) -> None:
        pattern = re.compile(re.escape(API) + r"/.*")
        for method in ("GET", "PATCH"):
            mock.add_callback(method, pattern, callback=self._answer)

    def _answer(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        query = unquote(parts.query)
        body = json.loads(request.body) if request.body else None
        self.requests.append(
            Sent(request.method, parts.path, query, body, request.headers.get("Authorization"))
        )
        if self.refuse is not None:
            return self.refuse, {}, "Unauthorized" if self.refuse == 401 else "Service Unavailable"
        resource = parts.path.removeprefix("/v7/")
        if request.method == "PATCH":
            return self._patch(resource, query, body or {})
        if resource == "application":
            return self._ok([self._application()] if f"slug eq '{self.slug}'" in query else [])
        if resource == "release":
            return self._ok([self._release(r) for r in self._releases(query)])
        if resource == "device":
            return self._ok([self._device(d, query) for d in self._devices(query)])
        return 404, {}, "Not Found"

    @staticmethod
    def _ok(rows: list[dict[str, Any]]) -> tuple[int, dict[str, str], str]:
        return 200, {"Content-Type": "application/json"}, json.dumps({"d": rows})

    def _application(self) -> dict[str, Any]:
        return {"id": self.app_id, "__metadata": {"uri": f"/resin/application(@id)?@id={self.app_id}"}}

    def _releases(self, query: str) -> list[Release]:
        found = list(self.releases)
        raw = re.search(r"raw_version eq '([^']+)'", query)
        if raw:
            found = [r for r in found if r.raw_version == raw.group(1)]
        commit = re.search(r"commit eq '([0-9a-f]+)'", query)
        if commit:
            found = [r for r in found if r.commit == commit.group(1)]
        if "status eq 'success'" in query:
            found = [r for r in found if r.status == "success"]
        app = re.search(r"belongs_to__application eq (\d+)", query)
        if app and int(app.group(1)) != self.app_id:
            return []
        return found

    def _release(self, release: Release) -> dict[str, Any]:
        return {
            "id": release.id,
            "commit": release.commit,
            "raw_version": release.raw_version,
            "status": release.status,
            "belongs_to__application": {"__id": self.app_id},
            "__metadata": {"uri": f"/resin/release(@id)?@id={release.id}"},
        }

    def _devices(self, query: str) -> list[Device]:
        found = list(self.devices)
        app = re.search(r"belongs_to__application eq (\d+)", query)
        if app and int(app.group(1)) != self.app_id:
            return []
        one = re.search(r"uuid eq '([^']+)'", query)
        if one:
            found = [d for d in found if d.uuid == one.group(1)]
        many = re.search(r"uuid in \(([^)]*)\)", query)
        if many:
            wanted = {u.strip().strip("'") for u in many.group(1).split(",")}
            found = [d for d in found if d.uuid in wanted]
        return sorted(found, key=lambda d: d.name)

    def _nav(self, release_id: int | None, expanded: bool) -> Any:
        release = self.release_by_id(release_id)
        if not expanded:
            return {"__id": release_id} if release_id is not None else None
        return [self._release(release)] if release is not None else []

    def _device(self, device: Device, query: str) -> dict[str, Any]:
        expand = query.split("$expand=", 1)[1] if "$expand=" in query else ""
        row: dict[str, Any] = {
            "id": device.id,
            "uuid": device.uuid,
            "device_name": device.name,
            "is_online": device.heartbeat == "online",
            "api_heartbeat_state": device.heartbeat,
            "overall_status": device.overall_status,
            "download_progress": device.download_progress,
            "belongs_to__application": {"__id": self.app_id},
            "is_running__release": self._nav(device.running, "is_running__release(" in expand),
            "is_pinned_on__release": self._nav(device.pinned, "is_pinned_on__release(" in expand),
            "__metadata": {"uri": f"/resin/device(@id)?@id={device.id}"},
        }
        if "device_tag(" in expand:
            row["device_tag"] = [
                {"tag_key": k, "value": v, "__metadata": {"uri": "/resin/device_tag"}}
                for k, v in device.tags.items()
            ]
        return row

    def _patch(self, resource: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        one = re.fullmatch(r"device\((\d+)\)", resource)
        ids: set[int] = set()
        if one:
            ids = {int(one.group(1))}
        elif resource == "device":
            eq = re.search(r"id eq (\d+)", query)
            inside = re.search(r"id in \(([^)]*)\)", query)
            if eq:
                ids = {int(eq.group(1))}
            elif inside:
                ids = {int(x) for x in inside.group(1).split(",")}
        if not ids or set(body) != {"is_pinned_on__release"}:
            return 400, {}, "Bad Request"
        for device in self.devices:
            if device.id in ids:
                device.pinned = body["is_pinned_on__release"]
                if device.pinned is not None and device.pinned != device.running:
                    device.overall_status = "updating"
                    device.download_progress = 0
        return 200, {}, "OK"
