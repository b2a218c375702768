"""The agent's software version (the installed ``cityedge`` distribution)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def agent_version() -> str:
    try:
        return version("cityedge")
    except PackageNotFoundError:
        return "0.0.0+unknown"
