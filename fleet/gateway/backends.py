"""The backend interface of the dossier service and its two failures."""

from __future__ import annotations

from typing import Protocol

from fleet.rpc import RpcNotFound, RpcUnavailable
from protocol.dossier import Dossier


class DossierNotFound(RpcNotFound):
    """No dossier has this code (answered ``not_found`` to the kiosk)."""


class UpstreamUnavailable(RpcUnavailable):
    """The city's system did not answer usably in time (answered ``unavailable``; retry later)."""


class DossierBackend(Protocol):
    """Where dossiers come from. ``code`` is already normalised (``protocol.dossier.DOSSIER_CODE_RE``).

    ``lookup`` returns within the backend's timeout or raises UpstreamUnavailable; it raises
    DossierNotFound for an unknown code. It must not log the code's owner or content.
    """

    def lookup(self, code: str) -> Dossier: ...
