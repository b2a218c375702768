"""The agent's software version (the installed ``cityedge`` distribution)."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version


def agent_version() -> str:
    """The release the launcher started (``CITYEDGE_RELEASE``), else the installed package's version."""
    release = os.environ.get("CITYEDGE_RELEASE")
    if release:
        return release
    try:
        return version("cityedge")
    except PackageNotFoundError:
        return "0.0.0+unknown"
