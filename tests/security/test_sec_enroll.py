"""Claim tokens and the enrolment API (real PKI, real SQLite, FastAPI test client)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agent.truststore import TrustStore
from fleet.claims import ClaimExpired, ClaimMismatch, ClaimStore, ClaimUnknown, ClaimUsed, parse_ttl
from fleet.enroll import EnrollService, enroll_router, keyring_trust
from fleet.keys_cli import init_keys
from fleet.pki import CityPKI
from fleet.pki_errors import CertificateRevoked
from hw.keystore import FileKeyStore, renewal_proof
from protocol.devauth import signed_bytes
from protocol.timefmt import format_ts, utc_now
from protocol.trust import RootKey


@dataclass
class Clock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utc_now() + self.offset


@dataclass
class Setup:
    client: TestClient
    claims: ClaimStore
    pki: CityPKI
    clock: Clock
    tmp: Path
    revoked: list[str]

    def device(self, name: str) -> FileKeyStore:
        return FileKeyStore.create(self.tmp / "devices" / name / "device_key.pem")

    def enroll(self, token: str, device_id: str, key: FileKeyStore | None = None, **over: Any) -> Any:
        key = key or self.device(device_id)
        body = {"token": token, "device_id": device_id, "csr_pem": key.csr(device_id).decode()}
        body |= {"role": "kiosk", "site": "hn-btl"} | over
        return self.client.post("/api/enroll", json=body)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    clock = Clock()
    pki = CityPKI.init(tmp_path / "pki", city="Testcity")
    init_keys(tmp_path / "fleet", tmp_path / "offline" / "root.pem")
    claims = ClaimStore.open(tmp_path / "fleet" / "claims.db", clock=clock)
    revoked: list[str] = []
    service = EnrollService(
        pki,
        claims,
        keyring_trust(tmp_path / "fleet"),
        broker_url="mqtts://127.0.0.1:8883",
        crl_url="https://fleet.example/api/crl",
        on_revoked=lambda records: revoked.extend(r.subject for r in records),
    )
    app = FastAPI()
    app.include_router(enroll_router(service))
    with TestClient(app) as client:
        yield Setup(client, claims, pki, clock, tmp_path, revoked)


def token(setup: Setup, role: str = "kiosk", site: str = "hn-btl", **kw: Any) -> str:
    claim = setup.claims.create(role, site, **kw)
    assert claim.token is not None
    return claim.token


# --- the claim store itself ------------------------------------------------------------------


def test_claim_is_single_use(setup: Setup) -> None:
    t = token(setup)
    setup.claims.reserve(t, "kiosk", "hn-btl", "kiosk-hn-btl-0001")
    with pytest.raises(ClaimUsed, match="claim token already used"):
        setup.claims.reserve(t, "kiosk", "hn-btl", "kiosk-hn-btl-0002")


def test_claim_expires(setup: Setup) -> None:
    t = token(setup, ttl=parse_ttl("30m"))
    setup.clock.offset = timedelta(minutes=31)
    with pytest.raises(ClaimExpired, match="claim token expired at"):
        setup.claims.reserve(t, "kiosk", "hn-btl", "kiosk-hn-btl-0001")


def test_claim_is_bound_to_role_and_site(setup: Setup) -> None:
    t = token(setup)
    with pytest.raises(ClaimMismatch, match="is for a kiosk at site hn-btl, not a camera"):
        setup.claims.reserve(t, "camera", "hn-btl", "cam-hn-btl-0001")
    with pytest.raises(ClaimMismatch, match="not a kiosk at site hn-gbt"):
        setup.claims.reserve(t, "kiosk", "hn-gbt", "kiosk-hn-gbt-0001")
    setup.claims.reserve(t, "kiosk", "hn-btl", "kiosk-hn-btl-0001")  # a mismatch does not burn it


def test_only_the_hash_is_stored(setup: Setup) -> None:
    t = token(setup)
    raw = (setup.tmp / "fleet" / "claims.db").read_bytes()
    assert t.encode() not in raw
    with pytest.raises(ClaimUnknown):
        setup.claims.reserve(t + "x", "kiosk", "hn-btl", "kiosk-hn-btl-0001")


def test_ttl_words() -> None:
    assert parse_ttl("30m") == timedelta(minutes=30)
    assert parse_ttl("2h") == timedelta(hours=2)
    assert parse_ttl("45") == timedelta(minutes=45)


# --- the enrolment API -----------------------------------------------------------------------


def test_enroll_returns_certificate_and_trust(setup: Setup) -> None:
    key = setup.device("a")
    res = setup.enroll(token(setup), "kiosk-hn-btl-0001", key)
    assert res.status_code == 200, res.text
    body = res.json()
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert cert.subject.rfc4514_string().endswith("CN=kiosk-hn-btl-0001") or "kiosk-hn-btl-0001" in str(
        cert.subject
    )
    assert setup.pki.check_certificate(body["certificate_pem"]).subject == "kiosk-hn-btl-0001"
    assert body["broker_url"] == "mqtts://127.0.0.1:8883"
    assert "BEGIN CERTIFICATE" in body["trust_bundle_pem"]
    assert body["crl_url"] == "https://fleet.example/api/crl"
    store = TrustStore.install(
        setup.tmp / "trust", RootKey.from_dict(body["fleet_root_key"]), body["fleet_keys"], utc_now()
    )
    assert store.version == 1


def test_enroll_errors_say_what_happened(setup: Setup) -> None:
    t = token(setup)
    assert setup.enroll(t, "kiosk-hn-btl-0001").status_code == 200
    res = setup.enroll(t, "kiosk-hn-btl-0002")
    assert res.status_code == 409 and "claim token already used" in res.json()["detail"]
    res = setup.enroll("ce1.not-a-real-token", "kiosk-hn-btl-0003")
    assert res.status_code == 401 and "not recognised" in res.json()["detail"]
    t2 = token(setup)
    res = setup.enroll(t2, "cam-hn-btl-0004", role="camera")
    assert res.status_code == 403 and "is for a kiosk" in res.json()["detail"]
    setup.clock.offset = timedelta(hours=1)
    res = setup.enroll(t2, "kiosk-hn-btl-0005")
    assert res.status_code == 410 and "claim token expired at" in res.json()["detail"]


def test_bad_csr_does_not_burn_the_token(setup: Setup) -> None:
    t = token(setup)
    res = setup.client.post(
        "/api/enroll",
        json={
            "token": t,
            "device_id": "kiosk-hn-btl-0001",
            "csr_pem": "junk",
            "role": "kiosk",
            "site": "hn-btl",
        },
    )
    assert res.status_code == 400 and "CSR" in res.json()["detail"]
    csr = setup.device("x").csr("kiosk-hn-btl-0002").decode()  # CN differs from the id asked
    body = {"token": t, "device_id": "kiosk-hn-btl-0001", "csr_pem": csr, "role": "kiosk", "site": "hn-btl"}
    res = setup.client.post("/api/enroll", json=body)
    assert res.status_code == 400 and "generate the request on the device" in res.json()["detail"]
    assert setup.enroll(t, "kiosk-hn-btl-0001").status_code == 200


def test_taken_device_id_needs_a_replacement_claim(setup: Setup) -> None:
    assert setup.enroll(token(setup), "kiosk-hn-btl-0001", setup.device("old")).status_code == 200
    res = setup.enroll(token(setup), "kiosk-hn-btl-0001", setup.device("thief"))
    assert res.status_code == 409 and "already enrolled on another unit" in res.json()["detail"]
    replacement = token(setup, device_id="kiosk-hn-btl-0001")
    assert setup.enroll(replacement, "kiosk-hn-btl-0001", setup.device("new")).status_code == 200
    assert setup.revoked == ["kiosk-hn-btl-0001"]  # the old unit was cut off


def test_renew_with_same_and_with_new_key(setup: Setup) -> None:
    key = setup.device("a")
    cert = setup.enroll(token(setup), "kiosk-hn-btl-0001", key).json()["certificate_pem"]
    csr = key.csr("kiosk-hn-btl-0001").decode()
    res = setup.client.post("/api/renew", json={"certificate_pem": cert, "csr_pem": csr})
    assert res.status_code == 200, res.text
    renewed = res.json()["certificate_pem"]
    new_key = setup.device("a2")
    new_csr = new_key.csr("kiosk-hn-btl-0001")
    res = setup.client.post("/api/renew", json={"certificate_pem": renewed, "csr_pem": new_csr.decode()})
    assert res.status_code == 400 and "needs a proof" in res.json()["detail"]
    proof = base64.b64encode(renewal_proof(key, new_csr)).decode()
    res = setup.client.post(
        "/api/renew", json={"certificate_pem": renewed, "csr_pem": new_csr.decode(), "proof": proof}
    )
    assert res.status_code == 200, res.text


def decommission_body(key: FileKeyStore, cert: str, ts: str) -> dict[str, str]:
    proof = base64.b64encode(key.sign(signed_bytes("decommission", cert, ts))).decode()
    return {"certificate_pem": cert, "ts": ts, "proof": proof}


def test_decommission_is_authenticated_by_the_device_key(setup: Setup) -> None:
    key = setup.device("a")
    cert = setup.enroll(token(setup), "kiosk-hn-btl-0001", key).json()["certificate_pem"]
    stranger = setup.device("b")
    res = setup.client.post("/api/decommission", json=decommission_body(stranger, cert, format_ts(utc_now())))
    assert res.status_code == 401 and "not signed with the device key" in res.json()["detail"]
    stale = format_ts(utc_now() - timedelta(minutes=10))
    res = setup.client.post("/api/decommission", json=decommission_body(key, cert, stale))
    assert res.status_code == 401 and "more than 5 minutes" in res.json()["detail"]
    res = setup.client.post("/api/decommission", json=decommission_body(key, cert, format_ts(utc_now())))
    assert res.status_code == 200, res.text
    assert res.json()["device_id"] == "kiosk-hn-btl-0001"
    with pytest.raises(CertificateRevoked):
        setup.pki.check_certificate(cert)
    res = setup.client.post(
        "/api/renew", json={"certificate_pem": cert, "csr_pem": key.csr("kiosk-hn-btl-0001").decode()}
    )
    assert res.status_code == 403 and "revoked" in res.json()["detail"]
    assert "BEGIN X509 CRL" in setup.client.get("/api/crl").text
