"""Logging: stderr plus a rotating file in the data directory.

The agent logs ids, kinds, names and counts only: never event data, command arguments, rpc
parameters or anything else that may hold personal data.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from agent.config import LoggingSection

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_NAME = "agent.log"


def log_path(data_dir: Path) -> Path:
    return data_dir / "logs" / LOG_NAME


def setup_logging(settings: LoggingSection, data_dir: Path) -> Path | None:
    """Configure the root logger; returns the log file path (None when file logging is off)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(settings.level)
    formatter = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler()
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    logging.getLogger("agent.paho").setLevel(max(logging.WARNING, root.level))
    if not settings.file:
        return None
    path = log_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=settings.file_max_bytes, backupCount=settings.file_backups, encoding="utf-8"
    )
    handler.setFormatter(formatter)
    root.addHandler(handler)
    os.chmod(path, 0o640)
    return path


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level)


def tail_lines(path: Path | None, count: int) -> list[str]:
    """The last ``count`` lines of the log file (reads backwards from the end)."""
    if path is None or count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            chunk = 8192
            data = b""
            while end > 0 and data.count(b"\n") <= count:
                start = max(0, end - chunk)
                handle.seek(start)
                data = handle.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]
