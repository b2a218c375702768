"""When the agent renews its certificate, and how it retries (agent/renewal.py)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import RenewalSection
from agent.renewal import CertRenewer, CertTimes, read_cert_times, renewal_due

T0 = datetime(2027, 3, 1, tzinfo=timezone.utc)


@settings(max_examples=300, deadline=None)
@given(
    lifetime_h=st.integers(min_value=1, max_value=825 * 24),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    elapsed_h=st.floats(min_value=-10, max_value=900 * 24),
)
def test_renewal_is_due_once_the_fraction_of_the_lifetime_has_passed(
    lifetime_h: int, fraction: float, elapsed_h: float
) -> None:
    cert = CertTimes(1, T0, T0 + timedelta(hours=lifetime_h))
    now = T0 + timedelta(hours=elapsed_h)
    wait = renewal_due(cert, now, fraction)
    assert (wait <= 0) == (now >= T0 + timedelta(hours=lifetime_h) * fraction)
    assert abs((now + timedelta(seconds=wait)) - cert.renew_at(fraction)) < timedelta(milliseconds=1)
    assert cert.renew_at(fraction) < cert.not_after, "always before it expires"


def write_cert(path: Path, not_before: datetime, not_after: datetime) -> None:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-hn-rn-0001")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, None)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_the_renewer_waits_renews_when_due_and_backs_off_on_failure(tmp_path: Path) -> None:
    now = [T0]
    answers: list[Any] = []
    calls: list[datetime] = []

    def renew() -> dict[str, Any]:
        calls.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        write_cert(tmp_path / "tls" / "device.crt", now[0], now[0] + timedelta(days=365))
        return dict(answer)

    config = RenewalSection(check_interval_s=3600, retry_min_s=60, retry_max_s=3600)
    renewer = CertRenewer(tmp_path, lambda: config, renew=renew, clock=lambda: now[0], rng=random.Random(7))
    assert renewer.step() == 3600 and calls == [], "not enrolled: nothing to renew"

    write_cert(tmp_path / "tls" / "device.crt", T0 - timedelta(days=190), T0 + timedelta(days=110))
    (tmp_path / "enrollment.json").write_text("{}")
    assert renewer.step() == 3600 and calls == [], "2/3 of 300 days is 10 days away"
    now[0] = T0 + timedelta(days=9, hours=23, minutes=30)
    assert renewer.step() == 30 * 60 and calls == [], "the next check falls on the due time"
    now[0] = T0 + timedelta(days=10)
    answers.extend(
        [OSError("fleet unreachable"), OSError("fleet unreachable"), {"certificate_not_after": "x"}]
    )
    delays = [renewer.step(), renewer.step()]
    assert len(calls) == 2 and renewer.failures == 2 and renewer.last_error == "fleet unreachable"
    assert all(0 < d <= 3600 for d in delays) and renewer.state()["failures"] == 2
    assert renewer.step() == 60 and renewer.renewed == 1 and renewer.failures == 0
    assert renewer.last_error is None
    renewed = read_cert_times(tmp_path / "tls" / "device.crt")
    assert renewed is not None and renewed.not_before == now[0].replace(microsecond=0)
    wait = renewer.step()
    assert len(calls) == 3 and wait == 3600, "the new certificate is not due for months"
    assert renewer.state()["renew_at"] is not None and renewer.state()["enrolled"]


def test_renewal_can_be_turned_off(tmp_path: Path) -> None:
    write_cert(tmp_path / "tls" / "device.crt", T0 - timedelta(days=300), T0 + timedelta(days=1))
    (tmp_path / "enrollment.json").write_text("{}")
    off = RenewalSection(enabled=False, check_interval_s=5)

    def renew() -> dict[str, Any]:
        raise AssertionError("must not be called")

    assert CertRenewer(tmp_path, lambda: off, renew=renew, clock=lambda: T0).step() == 5
