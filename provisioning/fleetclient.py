"""Talk to the fleet's enrolment API over HTTPS (stdlib only: it runs on the device).

Every failure becomes a ``ProvisionError`` subclass that says what happened in technician words:
no network, wrong time (certificate not yet valid), untrusted fleet, token used or expired.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioning.errors import (
    CertificateProblem,
    ClaimProblem,
    FleetRefused,
    NoNetwork,
    ProvisionError,
    WrongTime,
)

TIMEOUT_S = 20.0
_NOT_YET_VALID = 9  # X509_V_ERR_CERT_NOT_YET_VALID
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fleet_url(url: str) -> str:
    """Only https:// (plain http only to this machine, for development)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ProvisionError(
            f"fleet address {url!r} is not a URL", "give it as https://HOST:PORT (ask the fleet operator)"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ProvisionError(
            f"refusing to send a claim token over plain http to {parts.hostname}",
            "use the https:// address of the fleet",
        )
    return url.rstrip("/")


def _tls_failure(url: str, exc: ssl.SSLError) -> ProvisionError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _NOT_YET_VALID:
            return WrongTime(
                f"the fleet's certificate is not yet valid by this device's clock ({exc.verify_message}): "
                "the device clock is probably behind"
            )
        if code == _EXPIRED:
            return CertificateProblem(
                f"the fleet's certificate has expired by this device's clock ({exc.verify_message})",
                "check the device time; if it is right, tell the fleet operator their certificate expired",
            )
        return CertificateProblem(
            f"the fleet at {url} is not trusted ({exc.verify_message})",
            "check the fleet address and the --ca file (the city trust bundle); do not continue "
            "on an untrusted network",
        )
    return NoNetwork(f"secure connection to the fleet at {url} failed ({exc.reason or exc})")


def _network_failure(url: str, reason: object) -> ProvisionError:
    if isinstance(reason, ssl.SSLError):
        return _tls_failure(url, reason)
    if isinstance(reason, socket.gaierror):
        return NoNetwork(f"cannot find the fleet host {urlsplit(url).hostname} (no DNS answer: no network?)")
    if isinstance(reason, ConnectionRefusedError):
        return NoNetwork(f"cannot reach the fleet at {url}: connection refused (wrong port, or fleet down)")
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return NoNetwork(f"the fleet at {url} did not answer within {TIMEOUT_S:g} s")
    if isinstance(reason, OSError):
        return NoNetwork(f"cannot reach the fleet at {url}: {reason.strerror or reason}")
    return NoNetwork(f"cannot reach the fleet at {url}: {reason}")


def _refusal(status: int, detail: str) -> ProvisionError:
    if status in (401, 409, 410) or (status == 403 and "claim token" in detail):
        return ClaimProblem(f"the fleet refused the claim token: {detail}")
    if status == 403:
        return CertificateProblem(f"the fleet refused this device: {detail}")
    if status == 503 and "clock" in detail:
        return FleetRefused(f"the fleet cannot enrol now: {detail}", "tell the fleet operator")
    return FleetRefused(f"the fleet answered {status}: {detail}")


class FleetClient:
    """POST JSON to the fleet and get JSON back, over HTTPS verified with ``ca`` (or the system CAs)."""

    def __init__(self, fleet_url: str, ca: Path | None = None, timeout: float = TIMEOUT_S) -> None:
        self.url = check_fleet_url(fleet_url)
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=str(ca) if ca else None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as resp:
                answer = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise _refusal(exc.code, _detail(exc)) from exc
        except urllib.error.URLError as exc:
            raise _network_failure(self.url, exc.reason) from exc
        except ssl.SSLError as exc:
            raise _tls_failure(self.url, exc) from exc
        except (OSError, TimeoutError) as exc:
            raise _network_failure(self.url, exc) from exc
        except ValueError as exc:
            raise FleetRefused(f"the fleet at {self.url} did not answer JSON (is it the fleet?)") from exc
        if not isinstance(answer, dict):
            raise FleetRefused(f"the fleet at {self.url} answered something unexpected")
        return answer


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (ValueError, OSError):
        return str(exc.reason)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or exc.reason)
