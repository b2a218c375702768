"""Release bundles and their manifest: the contract between the release tooling, the TUF
repository served by the fleet and the device updater.

A release is a set of files (the project's wheel and its dependency wheels, role apps, models,
I/O-board firmware) described by a manifest that lists every file with its length and sha256.

* The **manifest** is the TUF target: ``releases/<version>/manifest.json`` (custom metadata
  ``{"version": ..., "build_time": ..., "total_bytes": ...}``), signed through the targets role.
* Every **file** is stored once, content-addressed, under ``targets/objects/<sha256>`` of the
  repository (served at ``/tuf/targets/objects/<sha256>``). A device fetches only the objects it
  does not already hold (by hash), and checks each against the signed manifest before use: the
  chain of trust is root -> targets -> manifest hash -> file hashes, as in OSTree and Uptane.
* A **bundle** (what ``cityedge release build`` writes and ``release publish`` reads) is an
  uncompressed tar holding ``manifest.json`` and ``objects/<sha256>`` for each distinct file.

The desired state's ``release`` member names what a device should run:
``{"version": "1.4.2", "target": "releases/1.4.2/manifest.json"}`` with optional
``"allow_downgrade": true`` (install an older version) and ``"force": true`` (ignore the device's
update lock and install windows).
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.errors import PayloadError
from protocol.models import decode

MANIFEST_FILE = "manifest.json"
OBJECTS_DIR = "objects"
SCHEMA = 1
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){1,3}([-+.][0-9A-Za-z.+-]{1,40})?$")
DEFAULT_ENTRY = ("{python}", "-m", "agent", "run")
"""argv template of a slot's program; the launcher appends its own arguments (e.g. ``--config
...``). ``{python}`` is the interpreter the launcher runs with, ``{slot}`` the slot directory."""
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def manifest_target(version: str) -> str:
    """TUF target name of a release's manifest."""
    return f"releases/{version}/{MANIFEST_FILE}"


def object_path(sha256: str) -> str:
    """Path of a content-addressed object, relative to the repository's targets directory."""
    if not SHA256_RE.match(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    return f"{OBJECTS_DIR}/{sha256}"


def check_relative_path(path: str) -> str:
    """A manifest path must be relative, POSIX, normalised and stay inside the slot."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError(f"{path!r} must be a relative POSIX path")
    parts = PurePosixPath(path).parts
    if any(part in ("", ".", "..") for part in parts) or str(PurePosixPath(*parts)) != path:
        raise ValueError(f"{path!r} must be normalised and stay inside the slot (no '.', '..' or '//')")
    return path


def check_version(value: str) -> str:
    if not VERSION_RE.match(value):
        raise ValueError(f"{value!r} is not a release version: use one like 1.4.2 (digits and dots)")
    return value


class ReleaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Where the file goes inside the slot, e.g. wheels/cityedge-1.4.2.whl.")
    sha256: str = Field(description="sha256 of the content (lower-case hex).")
    length: int = Field(ge=0, description="Length in bytes.")
    mode: int = Field(default=0o644, ge=0, le=0o777, description="File mode (0o755 for programs).")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_relative_path(value)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not SHA256_RE.match(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value


class ReleaseManifest(BaseModel):
    """Everything a device runs for one release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=SCHEMA, alias="schema", description="Manifest format version.")
    version: str = Field(description="Release version, e.g. 1.4.2.")
    build_time: str = Field(description="RFC 3339 time of the build; the device's clock floor.")
    platform: str = Field(default="any", description="Device platform tag, e.g. linux_aarch64, or any.")
    entry: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENTRY),
        min_length=1,
        description="argv template the launcher runs ({python}, {slot} substituted).",
    )
    health_check: list[str] | None = Field(
        default=None,
        description="Optional argv template run by the health gate; exit 0 = the role app is healthy.",
    )
    files: list[ReleaseFile] = Field(description="Every file of the release.")
    notes: str = Field(default="", max_length=4000, description="Release notes (free text).")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_version(value)

    @model_validator(mode="after")
    def _unique(self) -> ReleaseManifest:
        seen: set[str] = set()
        for item in self.files:
            if item.path in seen:
                raise ValueError(f"file {item.path!r} is listed twice")
            seen.add(item.path)
        return self

    @property
    def total_bytes(self) -> int:
        return sum(item.length for item in self.files)

    def objects(self) -> dict[str, int]:
        """Distinct objects: sha256 -> length."""
        return {item.sha256: item.length for item in self.files}

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, sort_keys=True, indent=1).encode("utf-8")


def parse_manifest(payload: bytes) -> ReleaseManifest:
    """Parse manifest bytes; PayloadError naming the bad field."""
    return decode(ReleaseManifest, payload, topic=None, max_bytes=MAX_MANIFEST_BYTES)


class DesiredRelease(BaseModel):
    """The ``release`` member of a signed desired state."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str
    target: str
    allow_downgrade: bool = False
    force: bool = False

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_version(value)


def parse_desired_release(value: dict[str, Any] | None) -> DesiredRelease | None:
    if value is None:
        return None
    try:
        return DesiredRelease.model_validate(value)
    except ValueError as exc:
        raise PayloadError(f"desired release {value!r} is not valid: {exc}") from exc


def version_key(version: str) -> tuple[Any, ...]:
    """Sort key of a release version (PEP 440 via ``packaging`` where it parses)."""
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)
