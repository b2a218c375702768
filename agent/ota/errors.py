"""The updater's error hierarchy: each message says what failed, why, and what to do.

``code`` is a short machine-readable reason carried in ``ota.failed`` / ``ota.rolled_back`` events
next to the human-readable text.
"""

from __future__ import annotations

from agent.errors import AgentError


class OtaError(AgentError):
    """Base class: an update step could not be done. The running version is untouched."""

    code = "error"
    retryable = False
    """True when trying again later may succeed (network, lock, window, budget)."""


class RepositoryError(OtaError):
    """TUF refused the repository's metadata or a target: tampered, wrong key, below threshold,
    rolled back, expired (freeze), inconsistent (mix-and-match) or too large (endless data)."""

    code = "repository"


class ReleaseNotFound(RepositoryError):
    """The release named in the desired state is not in the signed targets metadata."""

    code = "not_found"


class TransferError(OtaError):
    """The repository could not be reached or the transfer broke off (resumed on retry)."""

    code = "network"
    retryable = True


class IntegrityError(OtaError):
    """A downloaded or copied file does not match the length or sha256 of the signed manifest."""

    code = "integrity"


class DiskFull(OtaError):
    """Not enough free space for the update; nothing half-written is left behind."""

    code = "disk_full"


class ClockError(OtaError):
    """The device clock is before the software build time, so expiry cannot be judged."""

    code = "clock"
    retryable = True


class InstallError(OtaError):
    """Writing or verifying the inactive slot failed."""

    code = "install"


class PolicyRefused(OtaError):
    """The device's policy refuses this release (e.g. a downgrade not allowed, wrong platform)."""

    code = "policy"


class Deferred(OtaError):
    """Not now: an app holds the update lock, outside the install windows, or over the byte budget."""

    code = "deferred"
    retryable = True
