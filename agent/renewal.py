"""Certificate renewal by the agent itself, so that no device is ever locked out by time.

An enrolled device (``DATA_DIR/enrollment.json`` and ``DATA_DIR/tls/device.crt``, written by
``cityedge provision enroll``) asks the fleet for a new certificate once ``at_fraction`` (2/3) of
the current one's lifetime has passed: a 365-day certificate is renewed about four months before
it expires. It runs the same code as ``cityedge provision renew`` (``provisioning.lifecycle.renew``:
``POST /api/renew`` over HTTPS with a CSR for the same key, whose self-signature proves that the
device holds it). A failed attempt (fleet unreachable, clock not set, ...) is retried with capped,
jittered exponential backoff between ``retry_min_s`` and ``retry_max_s``.

The new certificate is written atomically in place; the MQTT link reads it at its next connection,
and the current one stays valid until it expires, so nothing is interrupted.

``renewal_due`` is the pure part; ``CertRenewer`` its thread.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.config import RenewalSection
from agent.link import backoff_delay
from protocol.timefmt import format_ts, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertTimes:
    """Validity of the device certificate in use."""

    serial: int
    not_before: datetime
    not_after: datetime

    def renew_at(self, fraction: float) -> datetime:
        return self.not_before + (self.not_after - self.not_before) * fraction


def renewal_due(cert: CertTimes, now: datetime, fraction: float) -> float:
    """Seconds until the certificate should be renewed (0 or less: now)."""
    return (cert.renew_at(fraction) - now).total_seconds()


def read_cert_times(path: Path) -> CertTimes | None:
    """The validity of the PEM certificate at ``path``; None when there is none (not enrolled)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("certificate renewal: the device certificate %s cannot be read: %s", path, exc)
        return None
    return CertTimes(cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)


class _QuietSteps:
    """The progress reporter of ``provisioning`` steps, as debug log lines."""

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        log.debug("certificate renewal: %s", title)
        yield


def provision_renew(data_dir: Path) -> Callable[[], dict[str, Any]]:
    """``cityedge provision renew`` for the device in ``data_dir`` (imported when first used)."""

    def renew() -> dict[str, Any]:
        from provisioning.files import DeviceFiles
        from provisioning.lifecycle import renew as lifecycle_renew

        return lifecycle_renew(DeviceFiles(data_dir), utc_now, _QuietSteps())

    return renew


class CertRenewer:
    """Checks the certificate's age and renews it when due (see module doc)."""

    def __init__(
        self,
        data_dir: Path,
        settings: Callable[[], RenewalSection],
        *,
        renew: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings
        self._renew = renew or provision_renew(self.data_dir)
        self.clock = clock
        self._rng = rng or random.Random()
        self.failures = 0
        self.renewed = 0
        self.last_error: str | None = None
        self.next_at: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "device.crt"

    def enrolled(self) -> bool:
        return (self.data_dir / "enrollment.json").is_file() and self.cert_path.is_file()

    def step(self) -> float:
        """One check (renewing when due); returns the seconds to wait before the next one."""
        settings = self.settings()
        if not settings.enabled or not self.enrolled():
            return settings.check_interval_s
        cert = read_cert_times(self.cert_path)
        if cert is None:
            return settings.check_interval_s
        now = self.clock()
        wait = renewal_due(cert, now, settings.at_fraction)
        if wait > 0:
            self.next_at = cert.renew_at(settings.at_fraction)
            return min(wait, settings.check_interval_s)
        log.info(
            "certificate renewal: the certificate (serial %x) expires %s; asking the fleet for a new one",
            cert.serial,
            format_ts(cert.not_after),
        )
        try:
            answer = self._renew()
        except Exception as exc:  # supervisor boundary: any failure is retried with backoff
            self.failures += 1
            self.last_error = str(exc)
            delay = backoff_delay(self.failures - 1, settings.retry_min_s, settings.retry_max_s, self._rng)
            log.warning(
                "certificate renewal failed (attempt %d), retrying in %.0f s: %s",
                self.failures,
                delay,
                exc,
            )
            return delay
        self.failures, self.last_error = 0, None
        self.renewed += 1
        log.info(
            "certificate renewed: the new one is valid until %s (used from the next connection)",
            answer.get("certificate_not_after"),
        )
        return settings.retry_min_s  # then re-read the new certificate

    def state(self) -> dict[str, Any]:
        cert = read_cert_times(self.cert_path) if self.enrolled() else None
        return {
            "enrolled": cert is not None,
            "not_after": format_ts(cert.not_after) if cert else None,
            "renew_at": format_ts(self.next_at) if self.next_at else None,
            "renewed": self.renewed,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    # -- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cert-renewal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._stop.wait(self.step()):
                return

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
