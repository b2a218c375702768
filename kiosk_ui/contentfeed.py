"""Which content the kiosk shows now: shipped copies, replaced by verified pushes from the fleet.

Trusted keys: the fleet keys the device received at enrolment (``DATA_DIR/trust/``: the root key
and the root-signed key list, verified here with ``protocol.trust``), plus an optional extra JSON
file ``{kid: base64 raw ed25519 public key}`` (``--content-keys``) for a separate content team key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kiosk_ui.content import (
    Announcement,
    Announcements,
    Catalogue,
    CatalogueIndex,
    Slot,
    load_shipped,
)
from protocol.errors import ProtocolError
from protocol.timefmt import utc_now
from protocol.trust import RootKey, decode_public_key, verify_key_list

log = logging.getLogger(__name__)

TRUST_ROOT = Path("trust") / "fleet_root.json"
TRUST_KEYS = Path("trust") / "fleet_keys.json"
"""Where the agent keeps the fleet trust (see ``agent.truststore``), relative to the data dir."""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def fleet_keys(data_dir: Path, now: datetime) -> dict[str, Ed25519PublicKey]:
    """The fleet keys active now, or {} when the device is not enrolled or the files are unreadable."""
    try:
        root = RootKey.from_dict(_read_json(data_dir / TRUST_ROOT))
        return verify_key_list(_read_json(data_dir / TRUST_KEYS), root).active(now)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, ProtocolError) as exc:
        log.warning("fleet trust files in %s unusable for content: %s", data_dir, exc)
        return {}


def extra_keys(path: Path | None) -> dict[str, Ed25519PublicKey]:
    """Keys from a ``{kid: base64 public key}`` file; a bad file is an error the operator must fix."""
    if path is None:
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{kid: base64 public key}}")
    return {str(kid): decode_public_key(str(value)) for kid, value in data.items()}


class ContentFeed:
    """Current catalogue (with its search index) and announcements."""

    def __init__(self, data_dir: Path, content_keys: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._extra = extra_keys(content_keys)
        self.catalogue = Slot(Catalogue, Catalogue.model_validate(load_shipped("catalogue.json")))
        self.announcements = Slot(
            Announcements, Announcements.model_validate(load_shipped("announcements.json"))
        )
        self.index = CatalogueIndex(self.catalogue.current)

    def keys(self, now: datetime) -> dict[str, Ed25519PublicKey]:
        return {**fleet_keys(self.data_dir, now), **self._extra}

    def apply_desired(self, config: Mapping[str, Any], now: datetime | None = None) -> list[str]:
        """Offer the pushed documents in the role's desired config; names of what changed."""
        now = now or utc_now()
        wanted = [name for name in ("catalogue", "announcements") if config.get(name) is not None]
        if not wanted:
            return []
        keys = self.keys(now)
        changed = []
        if "catalogue" in wanted and self.catalogue.offer(config["catalogue"], keys, now):
            self.index = CatalogueIndex(self.catalogue.current)
            changed.append("catalogue")
        if "announcements" in wanted and self.announcements.offer(config["announcements"], keys, now):
            changed.append("announcements")
        return changed

    def current_announcements(self, now: datetime | None = None) -> list[Announcement]:
        now = now or utc_now()
        return [a for a in self.announcements.current.items if a.current(now)]

    def status(self) -> dict[str, Any]:
        """For shadow/reported peripherals: where the content comes from (no personal data)."""
        return {
            "catalogue": self.catalogue.source,
            "catalogue_error": self.catalogue.last_error,
            "announcements": self.announcements.source,
            "announcements_error": self.announcements.last_error,
        }
