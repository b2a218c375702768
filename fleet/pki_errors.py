"""Errors of the city PKI, worded for the operator or technician who meets them."""

from __future__ import annotations


class PKIError(Exception):
    """Base class: the PKI refused or could not do what was asked."""


class PKINotFound(PKIError):
    """The directory holds no PKI (run ``cityedge fleet pki init`` first)."""


class PKIExists(PKIError):
    """``init`` was asked to overwrite an existing PKI."""


class CSRRejected(PKIError):
    """A certificate signing request is unreadable, badly signed, or asks for what it may not."""


class InvalidCertificate(PKIError):
    """A certificate cannot be read, or was not issued by this PKI."""


class UnknownCertificate(InvalidCertificate):
    """A certificate (or serial / device) that this PKI has no record of."""


class CertificateRevoked(PKIError):
    """The certificate has been revoked."""


class CertificateExpired(PKIError):
    """The certificate is outside its validity period."""
