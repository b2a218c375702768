"""The agent's error hierarchy: messages say what is wrong in words a technician can act on."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The agent configuration (file, override or command-line flag) is not valid."""


class OutboxError(AgentError):
    """An event could not be stored in the outbox."""


class OutboxFull(OutboxError):
    """The outbox is at its size limit and nothing more may be evicted for this event."""


class OutboxClosed(OutboxError):
    """The outbox is shut down (the agent is stopping)."""


class EventRejected(OutboxError):
    """The event itself is unacceptable (bad kind, data not a JSON object, too large)."""


class LinkDown(AgentError):
    """The MQTT link is not connected, so nothing can be published right now."""


class CommandRejected(AgentError):
    """A command (or desired state) is not trusted: unsigned, badly signed, expired or replayed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LocalApiError(AgentError):
    """A local API call failed: agent not running, bad request, timeout, or an error from the city.

    ``code`` is machine-readable where known: for RPC the city's code (``not_found``,
    ``unavailable``, ``bad_request``, ``unknown_service``, ...), ``timeout`` or ``offline``.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class CommandFailed(AgentError):
    """A command ran but could not do what was asked; answered with status "error"."""
