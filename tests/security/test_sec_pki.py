"""The city PKI: CA layout, device CSR signing rules, renewal, revocation, CRL, service identities."""

from __future__ import annotations

import shutil
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.pki import (
    CertificateExpired,
    CertificateRevoked,
    CityPKI,
    CSRRejected,
    InvalidCertificate,
    PKIError,
    PKIExists,
    PKINotFound,
    UnknownCertificate,
)
from hw.keystore import FileKeyStore, build_csr, renewal_proof
from protocol.clock import ClockNotSet
from protocol.timefmt import utc_now

DEV = "kiosk-hn-btl-0001"


def _csr(key: object, cn: str, hash_alg: hashes.HashAlgorithm | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    return builder.sign(key, hash_alg).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _store(tmp_path: Path, name: str = "key.pem", algorithm: str = "p256") -> FileKeyStore:
    return FileKeyStore.create(tmp_path / "dev" / name, algorithm=algorithm)  # type: ignore[arg-type]


def test_init_writes_root_and_issuing_with_private_keys_0600(tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki", city="Hanoi")
    d = pki.directory
    for key in (d / "root" / "root.key", d / "issuing" / "issuing.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    root = x509.load_pem_x509_certificate((d / "root" / "root.crt").read_bytes())
    issuing = x509.load_pem_x509_certificate((d / "issuing" / "issuing.crt").read_bytes())
    issuing.verify_directly_issued_by(root)
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    bundle = x509.load_pem_x509_certificates(pki.trust_bundle_pem())
    assert [c.subject for c in bundle] == [root.subject, issuing.subject]
    assert "Hanoi" in root.subject.rfc4514_string()


def test_init_refuses_to_overwrite_and_load_says_what_is_missing(tmp_path: Path) -> None:
    CityPKI.init(tmp_path / "pki")
    with pytest.raises(PKIExists):
        CityPKI.init(tmp_path / "pki")
    with pytest.raises(PKINotFound, match="pki init"):
        CityPKI.load(tmp_path / "empty")


def test_issuing_works_with_the_root_key_offline(tmp_path: Path) -> None:
    CityPKI.init(tmp_path / "pki")
    shutil.move(tmp_path / "pki" / "root" / "root.key", tmp_path / "usb-root.key")
    pki = CityPKI.load(tmp_path / "pki")
    pki.sign_device_csr(_store(tmp_path).csr(DEV), DEV)
    pki.revoke(DEV, "retired")


def test_device_certificate_contents(city_pki: CityPKI, tmp_path: Path) -> None:
    store = _store(tmp_path, algorithm="ed25519")
    cert = x509.load_pem_x509_certificate(city_pki.sign_device_csr(store.csr(DEV), DEV, days=90))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEV
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:cityedge:device:{DEV}"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = cert.not_valid_after_utc - utc_now()
    assert timedelta(days=89) < life <= timedelta(days=90)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(city_pki.issuing_cert_pem()))
    [record] = city_pki.certificates()
    assert (record.subject, record.kind, record.fingerprint) == (DEV, "device", store.fingerprint())


@pytest.mark.parametrize(
    ("cn", "device_id", "message"),
    [
        ("kiosk-hn-btl-0002", DEV, "is for 'kiosk-hn-btl-0002' but the device id is"),
        ("Kiosk_1", "Kiosk_1", "invalid device id"),
        ("fleet-ingest", "fleet-ingest", "reserved for services"),
    ],
)
def test_csr_with_wrong_or_bad_cn_is_refused(
    city_pki: CityPKI, tmp_path: Path, cn: str, device_id: str, message: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CSRRejected, match=message):
        city_pki.sign_device_csr(_csr(key, cn, hashes.SHA256()), device_id)


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "1024 bits is too weak"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1 is not accepted"),
        (lambda: ec.generate_private_key(ec.SECP192R1()), "secp192r1 is not accepted"),
        (ed448.Ed448PrivateKey.generate, "not accepted"),
    ],
    ids=["rsa1024", "secp256k1", "p192", "ed448"],
)
def test_weak_or_unexpected_keys_are_refused(city_pki: CityPKI, make_key: object, message: str) -> None:
    key = make_key()  # type: ignore[operator]
    alg = None if isinstance(key, ed448.Ed448PrivateKey) else hashes.SHA256()
    with pytest.raises(CSRRejected, match=message):
        city_pki.sign_device_csr(_csr(key, DEV, alg), DEV)
    assert city_pki.certificates() == []


def test_rsa_2048_is_accepted(city_pki: CityPKI) -> None:
    key = rsa.generate_private_key(65537, 2048)
    city_pki.sign_device_csr(_csr(key, DEV, hashes.SHA256()), DEV)


def test_tampered_csr_is_refused(city_pki: CityPKI, tmp_path: Path) -> None:
    der = x509.load_pem_x509_csr(_store(tmp_path).csr(DEV)).public_bytes(serialization.Encoding.DER)
    body = bytearray(der)
    body[-5] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(body)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CSRRejected, match="signature does not verify"):
        city_pki.sign_device_csr(pem, DEV)


def test_one_key_cannot_serve_two_devices(city_pki: CityPKI, tmp_path: Path) -> None:
    store = _store(tmp_path)
    city_pki.sign_device_csr(store.csr(DEV), DEV)
    city_pki.sign_device_csr(store.csr(DEV), DEV)  # same device again: fine
    with pytest.raises(CSRRejected, match="already certified for 'kiosk-hn-btl-0001'"):
        city_pki.sign_device_csr(store.csr("kiosk-hn-btl-0002"), "kiosk-hn-btl-0002")


def test_renewal_rules(city_pki: CityPKI, tmp_path: Path) -> None:
    old = _store(tmp_path, "old.pem")
    cert = city_pki.sign_device_csr(old.csr(DEV), DEV)
    city_pki.renew(old.csr(DEV), cert)  # same key: its CSR signature is the proof
    new = _store(tmp_path, "new.pem", "ed25519")
    csr = new.csr(DEV)
    with pytest.raises(CSRRejected, match="needs a proof"):
        city_pki.renew(csr, cert)
    stranger = _store(tmp_path, "stranger.pem")
    with pytest.raises(CSRRejected, match="not made with the current device key"):
        city_pki.renew(csr, cert, proof=renewal_proof(stranger, csr))
    other = new.csr("kiosk-hn-btl-0002")
    with pytest.raises(CSRRejected, match="device id is 'kiosk-hn-btl-0001'"):
        city_pki.renew(other, cert, proof=renewal_proof(old, other))
    renewed = x509.load_pem_x509_certificate(city_pki.renew(csr, cert, proof=renewal_proof(old, csr)))
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEV


def test_renewal_refused_for_revoked_expired_or_foreign_certificates(
    city_pki: CityPKI, tmp_path: Path, pki_in_the_past: Any
) -> None:
    store = _store(tmp_path)
    past = pki_in_the_past(city_pki, 3)
    expired = past.sign_device_csr(store.csr(DEV), DEV, days=1)
    with pytest.raises(CertificateExpired, match="re-enrol"):
        city_pki.renew(store.csr(DEV), expired)
    current = city_pki.sign_device_csr(store.csr(DEV), DEV)
    city_pki.revoke(DEV, "stolen")
    with pytest.raises(CertificateRevoked, match="revoked"):
        city_pki.renew(store.csr(DEV), current)
    rogue = CityPKI.init(tmp_path / "rogue")
    foreign = rogue.sign_device_csr(_store(tmp_path, "r.pem").csr(DEV), DEV)
    with pytest.raises(InvalidCertificate, match="not issued by the city issuing CA"):
        city_pki.renew(store.csr(DEV), foreign)


def test_revocation_by_device_and_serial_and_the_crl(city_pki: CityPKI, tmp_path: Path) -> None:
    a = x509.load_pem_x509_certificate(city_pki.sign_device_csr(_store(tmp_path, "a").csr(DEV), DEV))
    b_id = "cam-hn-gbt-0042"
    b = x509.load_pem_x509_certificate(city_pki.sign_device_csr(_store(tmp_path, "b").csr(b_id), b_id))
    first = x509.load_pem_x509_crl(city_pki.crl_pem())
    assert [r.serial for r in city_pki.revoke(DEV, "stolen", note="case 17")] == [a.serial_number]
    assert city_pki.revoke(DEV, "stolen") == []  # idempotent
    city_pki.revoke(f"0x{b.serial_number:x}", "retired")
    crl = x509.load_pem_x509_crl((city_pki.directory / "crl.pem").read_bytes())
    issuing = x509.load_pem_x509_certificate(city_pki.issuing_cert_pem())
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    reasons = {
        e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in crl
    }
    assert reasons == {
        a.serial_number: x509.ReasonFlags.key_compromise,
        b.serial_number: x509.ReasonFlags.cessation_of_operation,
    }
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None
    assert timedelta(days=6) < crl.next_update_utc - utc_now() <= timedelta(days=7)


def test_revocation_errors_are_clear(city_pki: CityPKI, tmp_path: Path) -> None:
    with pytest.raises(UnknownCertificate, match="no certificate was issued for 'ghost-0001'"):
        city_pki.revoke("ghost-0001", "stolen")
    city_pki.sign_device_csr(_store(tmp_path).csr(DEV), DEV)
    with pytest.raises(PKIError, match=r"unknown revocation reason 'bored'.*key-compromise"):
        city_pki.revoke(DEV, "bored")


def test_revoked_key_cannot_be_enrolled_again(city_pki: CityPKI, tmp_path: Path) -> None:
    store = _store(tmp_path)
    city_pki.sign_device_csr(store.csr(DEV), DEV)
    city_pki.revoke(DEV, "tampered")
    with pytest.raises(CSRRejected, match="revoked certificate"):
        city_pki.sign_device_csr(store.csr(DEV), DEV)
    city_pki.sign_device_csr(_store(tmp_path, "fresh").csr(DEV), DEV)


def test_service_and_server_identities(city_pki: CityPKI) -> None:
    key_pem, cert_pem = city_pki.issue_service_identity("fleet-ingest")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fleet-ingest"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "fleet services"
    assert serialization.load_pem_private_key(key_pem, None).public_key() == cert.public_key()
    with pytest.raises(PKIError, match="service identities are 'fleet-'"):
        city_pki.issue_service_identity("kiosk-hn-0001")
    _, srv_pem = city_pki.issue_server_cert(["mqtt.city.example", "10.0.0.5"])
    srv = x509.load_pem_x509_certificate(srv_pem)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.city.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert list(srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]


def test_pki_refuses_to_issue_with_an_unsynced_clock(city_pki: CityPKI, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    stale = CityPKI.load(city_pki.directory, clock=lambda: datetime(1970, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ClockNotSet, match="sync time"):
        stale.sign_device_csr(_store(tmp_path).csr(DEV), DEV)


def test_lifetime_limits(city_pki: CityPKI, tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(PKIError, match="lifetime"):
        city_pki.sign_device_csr(store.csr(DEV), DEV, days=5000)
    small = CityPKI.init(tmp_path / "small", root_days=100, issuing_days=30)
    cert = x509.load_pem_x509_certificate(small.sign_device_csr(store.csr(DEV), DEV, days=365))
    assert cert.not_valid_after_utc <= small.ca_not_after()["issuing"]


def test_build_csr_matches_the_keystore(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = serialization.load_pem_private_key(store.path.read_bytes(), None)
    csr = x509.load_pem_x509_csr(build_csr(key, DEV))  # type: ignore[arg-type]
    assert csr.public_key() == store.public_key()


def test_concurrent_signing_and_revocation_keep_the_crl_complete(city_pki: CityPKI, tmp_path: Path) -> None:
    """The enrolment API signs from a thread pool: inventory and crl.pem must not lose updates."""
    from concurrent.futures import ThreadPoolExecutor

    def enrol_and_revoke(i: int) -> int:
        device = f"kiosk-hn-{i:04d}"
        pki = CityPKI.load(city_pki.directory)  # separate instances, as separate processes would be
        pem = pki.sign_device_csr(_store(tmp_path, f"k{i}.pem").csr(device), device)
        pki.revoke(device, "retired")
        return x509.load_pem_x509_certificate(pem).serial_number

    with ThreadPoolExecutor(8) as pool:
        serials = set(pool.map(enrol_and_revoke, range(16)))
    crl = x509.load_pem_x509_crl((city_pki.directory / "crl.pem").read_bytes())
    assert {entry.serial_number for entry in crl} == serials
    assert len(city_pki.certificates()) == 16


def test_the_fleet_listener_anchor_admits_service_subjects_only(city_pki: CityPKI, tmp_path: Path) -> None:
    """Its TLS behaviour is tested on a real broker (test_sec_broker_subscribe); here its shape."""
    anchor = x509.load_pem_x509_certificate(city_pki.service_listener_anchor_pem())
    issuing = x509.load_pem_x509_certificate(city_pki.issuing_cert_pem())
    assert anchor.subject == anchor.issuer == issuing.subject
    assert anchor.public_key() == issuing.public_key()
    anchor.verify_directly_issued_by(anchor)
    constraints = anchor.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and constraints.value.excluded_subtrees is None
    [permitted] = constraints.value.permitted_subtrees or []
    assert permitted == x509.DirectoryName(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, city_pki.org),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet services"),
            ]
        )
    )
    device = x509.load_pem_x509_certificate(city_pki.sign_device_csr(_store(tmp_path, "d").csr(DEV), DEV))
    assert not device.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
