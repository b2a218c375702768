"""Who is calling: a ``Principal`` (a token, a signed-in person or a device) and ``AuthError``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PrincipalKind = Literal["token", "oidc", "session", "device"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``subject`` is stable ("token:<name>", the OIDC "sub", or a device id); ``name`` is what the
    trail and the dashboard show (token name, the person's name or e-mail, the device id).
    """

    subject: str
    role: str
    kind: PrincipalKind
    name: str


class AuthError(Exception):
    """A request carried a credential that cannot be accepted (401) or may not do this (403).

    ``reason`` is short and free of secrets: it is sent to the caller and kept on the trail.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
