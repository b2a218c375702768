"""X.509 building blocks for ``fleet.pki``: parsing with clear errors and certificate builders."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.pki_errors import CSRRejected, InvalidCertificate, PKIError
from protocol.keys import PrivateKey, PublicKey, WeakKeyError, check_strong_key, signature_hash

DEVICE_URI_PREFIX = "urn:cityedge:device:"
SERVICE_URI_PREFIX = "urn:cityedge:service:"
# Fleet service certificates carry this OU (devices never do): the broker's fleet listener trusts a
# name-constrained anchor that admits only subjects under O=<city org>, OU=SERVICE_OU.
SERVICE_OU = "fleet services"
CLOCK_SKEW = timedelta(minutes=5)
# cryptography raises InvalidVersion (not a ValueError) for a bad version field.
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, IndexError, UnicodeError, x509.InvalidVersion)


def pem_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8", errors="replace") if isinstance(data, str) else bytes(data)


def load_csr(pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature; CSRRejected says what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(pem_bytes(pem))
    except _PARSE_ERRORS as exc:
        raise CSRRejected(
            "the certificate request is not a readable PEM CSR (expected '-----BEGIN CERTIFICATE "
            "REQUEST-----'); generate it again on the device"
        ) from exc
    try:
        valid = csr.is_signature_valid
    except _PARSE_ERRORS as exc:
        raise CSRRejected("the certificate request uses an unsupported key or signature") from exc
    if not valid:
        raise CSRRejected("the certificate request's signature does not verify (damaged or forged)")
    return csr


def load_cert(pem: bytes | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem_bytes(pem))
    except _PARSE_ERRORS as exc:
        raise InvalidCertificate(
            "not a readable PEM certificate (expected '-----BEGIN CERTIFICATE-----')"
        ) from exc


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except _PARSE_ERRORS as exc:
        raise PKIError("a PKI private key file is damaged or not a PEM private key") from exc
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PKIError("a PKI private key is of an unsupported type")
    return key


def strong_public_key(holder: x509.CertificateSigningRequest | x509.Certificate) -> PublicKey:
    """The public key of a CSR or certificate if it is strong enough (CSRRejected otherwise)."""
    try:
        key = holder.public_key()
    except _PARSE_ERRORS as exc:
        raise CSRRejected("the key type in the request is not supported") from exc
    try:
        return check_strong_key(key)
    except WeakKeyError as exc:
        raise CSRRejected(f"key refused: {exc}") from exc


def common_name(name: x509.Name) -> str | None:
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except _PARSE_ERRORS:
        return None
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class LeafSpec:
    """What goes into an end-entity certificate."""

    cn: str
    public_key: PublicKey
    not_before: datetime
    not_after: datetime
    server: bool = False
    uris: Sequence[str] = ()
    dns: Sequence[str] = ()
    ips: Sequence[str] = ()
    ou: str | None = None


def _name(cn: str, org: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def service_subtree(org: str) -> x509.Name:
    """The subject prefix every fleet service certificate has (O=org, OU=SERVICE_OU)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SERVICE_OU),
        ]
    )


def ca_certificate(
    *,
    subject_cn: str,
    org: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate (self-signed when ``issuer`` is None)."""
    subject = _name(subject_cn, org)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    auth_key = (issuer_key if issuer is not None else key).public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(auth_key), critical=False
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def leaf_certificate(
    spec: LeafSpec, *, org: str, issuer: x509.Certificate, issuer_key: PrivateKey
) -> x509.Certificate:
    """An end-entity certificate: clientAuth (devices, services) or serverAuth (the broker)."""
    rsa_key = isinstance(spec.public_key, rsa.RSAPublicKey)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in spec.uris]
    sans += [x509.DNSName(d) for d in spec.dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]
    eku = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.cn, org, spec.ou))
        .issuer_name(issuer.subject)
        .public_key(spec.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(spec.public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def name_constrained_anchor(
    ca: x509.Certificate,
    key: PrivateKey,
    permitted: x509.Name,
    *,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A self-signed twin of ``ca`` (same subject and key) whose name constraints admit only leaf
    subjects under ``permitted``.

    Used as the *only* trust anchor of a TLS listener, it accepts the leaves ``ca`` signed whose
    subject starts with ``permitted`` and refuses the others, even when a client sends the real
    chain up to the root (the root is not trusted there, and OpenSSL applies an anchor's name
    constraints). CRLs signed by ``ca`` verify against it (same name, same key).
    """
    return (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DirectoryName(permitted)], excluded_subtrees=None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def split_hostnames(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split broker names into DNS names and IP addresses."""
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips
