"""Where a device keeps its private key: a file (0600, generated on the device) or hardware.

The private key is generated on the device and never leaves it: the fleet only ever sees the
certificate signing request (``csr``) and signatures. ``KeyStore`` is the one interface; the
provisioning tool and the agent receive an implementation at construction.

- ``FileKeyStore``: a PKCS#8 PEM file with mode 0600, created atomically, never overwritten.
- ``Pkcs11KeyStore`` / ``TpmKeyStore``: placeholders for a secure element or TPM. They raise
  ``KeyStoreUnavailable`` with a clear message unless their library is present; with the library
  present they still refuse (not implemented in this release) rather than pretend.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from protocol.keys import PrivateKey, PublicKey, fingerprint, sign_data, signature_hash
from protocol.topics import check_device_id

KeyAlgorithm = Literal["ed25519", "p256", "p384"]
DEVICE_URI_PREFIX = "urn:cityedge:device:"


class KeyStoreError(Exception):
    """The device key cannot be created, read or used."""


class KeyStoreUnavailable(KeyStoreError):
    """The requested key store (hardware) does not exist on this device."""


class KeyNotFound(KeyStoreError):
    """No key has been generated yet at the expected place."""


@runtime_checkable
class KeyStore(Protocol):
    """A device private key that can sign but is never exported (except for file-based TLS)."""

    def public_key(self) -> PublicKey:
        """The public half of the device key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the scheme of ``protocol.keys.sign_data`` (Ed25519: pure)."""
        ...

    def csr(self, device_id: str) -> bytes:
        """PEM CSR with CN = ``device_id`` and SAN URI ``urn:cityedge:device:<id>``."""
        ...

    def key_pem_for_tls(self) -> bytes | None:
        """PEM private key for a TLS library, or None when the key cannot leave hardware."""
        ...


def generate_private_key(algorithm: KeyAlgorithm = "ed25519") -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise KeyStoreError(f"unknown key algorithm {algorithm!r}: use ed25519, p256 or p384")


def build_csr(key: PrivateKey, device_id: str) -> bytes:
    """A PEM CSR for ``device_id`` signed by ``key`` (the proof the requester holds the key)."""
    check_device_id(device_id)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]),
            critical=False,
        )
    )
    csr = builder.sign(key, signature_hash(key))
    return csr.public_bytes(serialization.Encoding.PEM)


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; never overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    tmp = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # fails if the key already exists: no silent replacement
    except FileExistsError as exc:
        raise KeyStoreError(f"a device key already exists at {path}; refusing to overwrite it") from exc
    finally:
        tmp.unlink(missing_ok=True)


class FileKeyStore:
    """A private key in a 0600 PEM file generated on the device."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyNotFound(
                f"no device key at {self.path}; generate one first (cityedge provision keygen)"
            ) from exc
        except OSError as exc:
            raise KeyStoreError(f"cannot read the device key at {self.path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"the device key at {self.path} is damaged or not a PEM private key") from exc
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            raise KeyStoreError(f"the device key at {self.path} is not an Ed25519 or ECDSA key")
        self._key: PrivateKey = key

    @classmethod
    def create(cls, path: Path, *, algorithm: KeyAlgorithm = "ed25519") -> FileKeyStore:
        """Generate a new key at ``path`` (mode 0600); KeyStoreError if one exists already."""
        _write_secret(Path(path), _private_pem(generate_private_key(algorithm)))
        return cls(path)

    @classmethod
    def open_or_create(cls, path: Path, *, algorithm: KeyAlgorithm = "ed25519") -> FileKeyStore:
        try:
            return cls(path)
        except KeyNotFound:
            return cls.create(path, algorithm=algorithm)

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def fingerprint(self) -> str:
        return fingerprint(self.public_key())

    def sign(self, data: bytes) -> bytes:
        return sign_data(self._key, data)

    def csr(self, device_id: str) -> bytes:
        return build_csr(self._key, device_id)

    def key_pem_for_tls(self) -> bytes | None:
        return _private_pem(self._key)


def _hardware_unavailable(kind: str, module: str, hint: str) -> KeyStoreUnavailable:
    return KeyStoreUnavailable(
        f"hardware key store not available on this device: {kind} support needs the Python module "
        f"{module!r} and {hint}; use the file key store (FileKeyStore) or install them"
    )


class Pkcs11KeyStore:
    """Placeholder for a key in a PKCS#11 token (secure element, HSM, smart card)."""

    def __init__(self, module_path: Path, *, token_label: str, key_label: str) -> None:
        if importlib.util.find_spec("pkcs11") is None or not Path(module_path).exists():
            raise _hardware_unavailable("PKCS#11", "pkcs11", f"the token library {module_path}")
        raise KeyStoreUnavailable(
            "hardware key store not available on this device: PKCS#11 keys are not supported by this "
            "release yet; use the file key store (FileKeyStore)"
        )

    def public_key(self) -> PublicKey:  # pragma: no cover - never constructed
        raise KeyStoreUnavailable("hardware key store not available on this device")

    def sign(self, data: bytes) -> bytes:  # pragma: no cover
        raise KeyStoreUnavailable("hardware key store not available on this device")

    def csr(self, device_id: str) -> bytes:  # pragma: no cover
        raise KeyStoreUnavailable("hardware key store not available on this device")

    def key_pem_for_tls(self) -> bytes | None:  # pragma: no cover
        return None


class TpmKeyStore(Pkcs11KeyStore):
    """Placeholder for a key in a TPM 2.0 (through tpm2-pkcs11 or tpm2-pytss)."""

    def __init__(self, device: Path = Path("/dev/tpmrm0"), *, key_label: str = "cityedge") -> None:
        if importlib.util.find_spec("tpm2_pytss") is None or not Path(device).exists():
            raise _hardware_unavailable("TPM 2.0", "tpm2_pytss", f"a TPM at {device}")
        raise KeyStoreUnavailable(
            "hardware key store not available on this device: TPM keys are not supported by this "
            "release yet; use the file key store (FileKeyStore)"
        )


def renewal_proof(current: KeyStore, csr_pem: bytes) -> bytes:
    """The current key's signature over a new CSR (DER), which ``CityPKI.renew`` asks for when the
    device renews with a new key: only the holder of the current key can renew."""
    try:
        der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise KeyStoreError("the new certificate request is not a readable PEM CSR") from exc
    return current.sign(der)
