"""Small JSON state files in the data directory, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.errors import AgentError


class StateFileError(AgentError):
    """A state file in the data directory cannot be read or written."""


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"), sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateFileError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise StateFileError(f"{path} does not hold a JSON object; fix or delete it")
    return data
