"""Revocation reasons and CRL building for ``fleet.pki``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.pki_errors import PKIError
from fleet.pki_store import IssuedCert
from protocol.keys import PrivateKey, signature_hash

# Words an operator uses -> RFC 5280 reason codes.
_ALIASES = {
    "stolen": x509.ReasonFlags.key_compromise,
    "lost": x509.ReasonFlags.key_compromise,
    "compromised": x509.ReasonFlags.key_compromise,
    "tampered": x509.ReasonFlags.key_compromise,
    "decommissioned": x509.ReasonFlags.cessation_of_operation,
    "retired": x509.ReasonFlags.cessation_of_operation,
    "replaced": x509.ReasonFlags.superseded,
}
_CODES = (
    x509.ReasonFlags.unspecified,
    x509.ReasonFlags.key_compromise,
    x509.ReasonFlags.affiliation_changed,
    x509.ReasonFlags.superseded,
    x509.ReasonFlags.cessation_of_operation,
    x509.ReasonFlags.certificate_hold,
)


def reason_words() -> list[str]:
    return sorted([c.name.replace("_", "-") for c in _CODES] + list(_ALIASES))


def parse_reason(text: str) -> x509.ReasonFlags:
    """``key-compromise``, ``superseded``, ... or an everyday word (stolen, lost, retired...)."""
    word = text.strip().lower().replace("_", "-")
    if word in _ALIASES:
        return _ALIASES[word]
    for code in _CODES:
        if code.name.replace("_", "-") == word:
            return code
    raise PKIError(f"unknown revocation reason {text!r}; use one of: {', '.join(reason_words())}")


def build_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Sequence[IssuedCert],
    number: int,
    last_update: datetime,
    next_update: datetime,
) -> bytes:
    """PEM CRL listing ``revoked`` with their reasons."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for rec in revoked:
        if rec.revoked_at is None:
            continue
        entry = x509.RevokedCertificateBuilder().serial_number(rec.serial).revocation_date(rec.revoked_at)
        reason = x509.ReasonFlags[rec.revocation_reason or "unspecified"]
        if reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(issuer_key, signature_hash(issuer_key))
    return crl.public_bytes(serialization.Encoding.PEM)
