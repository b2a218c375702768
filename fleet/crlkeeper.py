"""Keeps the CRL fresh without a cron job: re-signed once half its lifetime has passed.

A CRL past its ``nextUpdate`` makes the broker refuse every device (OpenSSL treats a stale CRL as
a failed check), so the fleet service calls ``CrlKeeper.tick()`` from its maintenance thread every
``crl_check_s``. A CRL (the PKI's ``crl.pem``, and the broker's copy when a broker directory is
given) is due when it is missing or unreadable, when half of its lifetime (``last_update`` to
``next_update``) has passed, or when the broker's copy is older than the PKI's (a revocation made
without ``--broker-dir``). Then the CRL is re-signed, copied into the broker directory with the
ACL (``fleet.brokerconf.refresh_broker_files``) and the broker is told to reload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from fleet.pki import CityPKI
from protocol.timefmt import format_ts, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrlTimes:
    number: int
    last_update: datetime
    next_update: datetime

    def due(self, now: datetime) -> bool:
        """True once half of the lifetime has passed (or the CRL is already stale)."""
        return now >= self.last_update + (self.next_update - self.last_update) / 2


def crl_times(path: Path) -> CrlTimes | None:
    """Number and validity of the PEM CRL at ``path``; None when missing or unreadable."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    return CrlTimes(int(number), crl.last_update_utc, next_update)


def reloader(spec: str | None) -> Callable[[], None] | None:
    """``pidfile:PATH`` (SIGHUP the pid in PATH) or ``systemd:UNIT`` (systemctl reload UNIT)."""
    if spec is None:
        return None
    from fleet.revocation import reload_by_pidfile, reload_by_systemd

    how, _, target = spec.partition(":")
    if how == "pidfile":
        return lambda: reload_by_pidfile(Path(target))
    if how == "systemd":
        return lambda: reload_by_systemd(target)
    raise ValueError(f"broker reload {spec!r} must be pidfile:PATH or systemd:UNIT")


class CrlKeeper:
    """Re-signs the CRL of the PKI in ``pki_dir`` before it goes stale (see module doc)."""

    def __init__(
        self,
        pki_dir: Path,
        *,
        broker_dir: Path | None = None,
        reload: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
        load: Callable[[Path], CityPKI] = CityPKI.load,
    ) -> None:
        self.pki_dir = Path(pki_dir)
        self.broker_dir = broker_dir
        self.reload = reload
        self.clock = clock
        self._load = load
        self._pki: CityPKI | None = None
        self.resigned = 0

    def why_due(self, now: datetime) -> str | None:
        """Why the CRL must be re-signed now, or None."""
        ours = crl_times(self.pki_dir / "crl.pem")
        if ours is None:
            return "the PKI has no readable CRL"
        if ours.due(now):
            return f"half of its lifetime has passed (next update {format_ts(ours.next_update)})"
        if self.broker_dir is None:
            return None
        theirs = crl_times(self.broker_dir / "crl.pem")
        if theirs is None:
            return f"the broker directory {self.broker_dir} has no readable CRL"
        if theirs.due(now):
            return f"the broker's copy is half way to its next update ({format_ts(theirs.next_update)})"
        if theirs.number < ours.number:
            return f"the broker's copy (CRL {theirs.number}) is older than the PKI's (CRL {ours.number})"
        return None

    def tick(self) -> bool:
        """Re-sign and publish the CRL if it is due; True when it was."""
        reason = self.why_due(self.clock())
        if reason is None:
            return False
        if self._pki is None:
            self._pki = self._load(self.pki_dir)
        if self.broker_dir is not None:
            from fleet.brokerconf import refresh_broker_files

            refresh_broker_files(self._pki, self.broker_dir)
        else:
            self._pki.crl_pem()
        self.resigned += 1
        fresh = crl_times(self.pki_dir / "crl.pem")
        log.info(
            "CRL re-signed (%s); next update %s",
            reason,
            format_ts(fresh.next_update) if fresh else "unknown",
        )
        if self.reload is not None:
            self.reload()
        return True

    def close(self) -> None:
        if self._pki is not None:
            self._pki.inventory.dispose()
            self._pki = None
