"""Errors of the camera role, in words a technician can act on."""

from __future__ import annotations


class CameraRoleError(Exception):
    """Base class for camera pipeline errors."""


class CameraConfigError(CameraRoleError):
    """The camera configuration is invalid (file, field and problem are named)."""


class DetectorError(CameraRoleError):
    """The detector cannot be built or run."""


class EvidenceError(CameraRoleError):
    """Evidence images could not be produced or stored."""


class SinkError(CameraRoleError):
    """Counts or events could not be handed to the agent."""
