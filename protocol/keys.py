"""Asymmetric keys both sides accept, their fingerprints, and raw signatures over bytes.

Allowed device and service keys: Ed25519, ECDSA on P-256/P-384/P-521, RSA >= 2048 bits.
``sign_data``/``verify_data`` fix one signature scheme per key type so that a device
(``hw.keystore``) and the fleet (``fleet.pki``) agree without negotiating:

- Ed25519: pure Ed25519 over the data;
- ECDSA: DER-encoded signature with SHA-256 (P-256), SHA-384 (P-384) or SHA-512 (P-521);
- RSA: PKCS#1 v1.5 with SHA-256.
"""

from __future__ import annotations

import hashlib
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from protocol.errors import SignatureError

PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MIN_RSA_BITS = 2048
ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class WeakKeyError(ValueError):
    """A key is of a type or size the city does not accept."""


def describe_key(key: object) -> str:
    """Short human name of a public key, e.g. ``ed25519``, ``ecdsa-p256``, ``rsa-2048``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecdsa-{key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def check_strong_key(key: object) -> PublicKey:
    """Return ``key`` if it is an allowed public key; WeakKeyError says why not."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise WeakKeyError(
                f"elliptic curve {key.curve.name} is not accepted; use Ed25519 or ECDSA P-256/P-384/P-521"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKeyError(
                f"RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits, "
                "or better Ed25519 / ECDSA P-256"
            )
        return key
    raise WeakKeyError(
        f"key type {describe_key(key)} is not accepted; use Ed25519, ECDSA P-256+ or RSA >= 2048"
    )


def public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex (the same on device and fleet)."""
    return hashlib.sha256(public_der(key)).hexdigest()


X509Hash: TypeAlias = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def _ec_hash(curve: ec.EllipticCurve) -> X509Hash:
    if curve.name == "secp384r1":
        return hashes.SHA384()
    if curve.name == "secp521r1":
        return hashes.SHA512()
    return hashes.SHA256()


def sign_data(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with the fixed scheme of the key type (see module doc)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_ec_hash(key.curve)))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def verify_data(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raise SignatureError unless ``signature`` is ``key``'s signature of ``data``."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_ec_hash(key.curve)))
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise SignatureError(f"signature does not match ({describe_key(key)} key)") from exc


def signature_hash(key: PrivateKey | PublicKey) -> X509Hash | None:
    """Hash to pass to cryptography's X.509 builders for this key (None for Ed25519)."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return None
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return _ec_hash(key.curve)
    return hashes.SHA256()
