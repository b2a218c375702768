"""The fleet connects with its own identity over mqtts:// (mutual TLS) and ingests as usual."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fleet_helpers import wait_for

from fleet.broker import BrokerConfig, MosquittoBroker, TlsListener
from fleet.config import FleetConfig
from fleet.ingest import IngestError
from fleet.service import FleetService
from protocol.timefmt import now_ts


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if cn == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if cn == "broker":
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test ca", ca_key, None, ca_key)
    files: dict[str, Path] = {}
    files["ca"], _ = _write(tmp_path, "ca", ca, ca_key)
    for name in ("broker", "fleet-ingest"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.crt"], files[f"{name}.key"] = _write(tmp_path, name, _cert(name, key, ca, ca_key), key)
    return files


def test_mtls_ingest(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = TlsListener(0, pki["ca"], pki["broker.crt"], pki["broker.key"])
    broker = MosquittoBroker(tmp_path / "broker", BrokerConfig(tls=tls)).start()
    try:
        base: dict[str, Any] = {
            "broker_url": broker.tls_url,
            "db_url": f"sqlite:///{tmp_path}/f.db",
            "retained_sync_s": 0,
        }
        with pytest.raises(IngestError, match="broker"):  # no client certificate: refused
            FleetService(FleetConfig(**base, ca_file=pki["ca"], worker_id="fleet-anon")).start()
        config = FleetConfig(
            **base, ca_file=pki["ca"], cert_file=pki["fleet-ingest.crt"], key_file=pki["fleet-ingest.key"]
        )
        fleet = FleetService(config).start()
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion

            device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-tls-0001", protocol=mqtt.MQTTv5)
            device.connect(broker.config.host, broker.config.port)  # the plain listener, for the device side
            device.loop_start()
            status = {"online": True, "ts": now_ts(), "role": "camera"}
            device.publish("city/v1/devices/cam-tls-0001/status", json.dumps(status), qos=1).wait_for_publish(
                5
            )
            wait_for(lambda: fleet.store.device("cam-tls-0001"), what="device seen over TLS")
            device.disconnect()
            device.loop_stop()
        finally:
            fleet.stop()
    finally:
        broker.stop()
