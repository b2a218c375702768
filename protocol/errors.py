"""Error hierarchy for everything that crosses the wire.

Two roots, as in python-tuf: ``PayloadError`` when bytes cannot be understood (bad JSON, wrong
shape, too large) and ``SignatureError`` when they are understood but not trusted.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class for contract violations."""


class PayloadError(ProtocolError):
    """A payload is not valid JSON, is too large, or does not match its model.

    The message names the topic (when known) and the first offending field, in words a
    technician can act on.
    """

    def __init__(self, message: str, *, topic: str | None = None, field: str | None = None) -> None:
        self.topic = topic
        self.field = field
        where = f" on {topic}" if topic else ""
        super().__init__(f"bad payload{where}: {message}")


class TopicError(ProtocolError, ValueError):
    """A topic is not part of the contract or names an invalid device id.

    Also a ValueError, so that model validators raising it become ordinary field errors.
    """


class SignatureError(ProtocolError):
    """A signature is missing, uses an unknown key or algorithm, or does not verify."""
