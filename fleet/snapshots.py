"""Camera snapshots: the answer of a camera to the ``snapshot`` command.

The device blurs people and plates before it answers (agent/camera/snapshot.py), but a blur can
miss, so the fleet treats the picture like evidence: the command's stored result keeps the JPEG,
every listing of commands (API, CLI, dashboard) shows the result without it, and the picture itself
is served only by the dashboard's image route, which needs the evidence permission and is written
on the audit trail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

SNAPSHOT = "snapshot"
CONTENT_TYPE = "image/jpeg"


def image_url(device: str, command_id: str) -> str:
    return f"/devices/{device}/snapshot/{command_id}"


def image_of(row: Mapping[str, Any]) -> bytes | None:
    """The JPEG of a successful snapshot command, checked against its sha256; None otherwise."""
    result = row.get("result")
    if row.get("name") != SNAPSHOT or row.get("status") != "ok" or not isinstance(result, Mapping):
        return None
    data, sha = result.get("data"), result.get("sha256")
    if result.get("content_type") != CONTENT_TYPE or not isinstance(data, str) or not isinstance(sha, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if hashlib.sha256(raw).hexdigest() == sha else None


def without_image(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as listings show it: a snapshot's picture replaced by the address that serves it."""
    result = row.get("result")
    if row.get("name") != SNAPSHOT or not isinstance(result, Mapping) or "data" not in result:
        return row
    shown = {k: v for k, v in result.items() if k != "data"}
    if image_of(row) is not None:
        shown["image"] = image_url(str(row["device"]), str(row["id"]))
    else:
        shown["image_problem"] = "the picture does not match its sha256 or is not a JPEG"
    return {**row, "result": shown}
