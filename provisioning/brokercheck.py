"""A real mTLS MQTT connection to the city broker with the device's own identity.

Run only while the agent is stopped: the broker forces the client id to the certificate CN, so a
second connection would take over the agent's session. The check resumes the device's session
(``clean_start=False``, same expiry) and never acknowledges anything, so messages queued for the
agent are delivered to it again later instead of being lost.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from provisioning.errors import BrokerUnreachable, CertificateProblem, ProvisionError, WrongTime


@dataclass(frozen=True)
class BrokerTarget:
    host: str
    port: int
    device_id: str
    ca: Path
    cert: Path
    key: Path
    session_expiry_s: int = 7 * 24 * 3600


def _tls_problem(exc: ssl.SSLError, where: str) -> ProvisionError:
    text = str(exc).lower()
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == 9:
            return WrongTime(f"the broker's certificate is not yet valid by this device's clock ({where})")
        return CertificateProblem(f"the broker at {where} is not trusted: {exc.verify_message}")
    if "revoked" in text:
        return CertificateProblem(
            f"the broker refused this device's certificate: it was revoked ({where})",
            "the device was decommissioned or reported stolen: enrol it again with a new claim token",
        )
    if "expired" in text:
        return CertificateProblem(f"the broker refused this device's certificate: expired ({where})")
    if "unknown ca" in text or "certificate" in text:
        return CertificateProblem(f"the broker refused this device's certificate ({where}): {exc}")
    return BrokerUnreachable(f"secure connection to the broker at {where} failed: {exc}")


def connect_once(target: BrokerTarget, timeout: float = 10.0) -> str:
    """Connect, wait for CONNACK, disconnect; return a one-line description or raise."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    where = f"{target.host}:{target.port}"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=target.device_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    try:
        client.tls_set(ca_certs=str(target.ca), certfile=str(target.cert), keyfile=str(target.key))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateProblem(f"cannot load the device certificate or key: {exc}") from exc
    done = threading.Event()
    result: list[str] = []

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        result.append(str(reason))
        done.set()

    def on_disconnect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if not done.is_set():
            result.append(f"connection closed before the broker accepted it ({reason})")
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = target.session_expiry_s
    try:
        client.connect(target.host, target.port, keepalive=15, clean_start=False, properties=props)
    except ssl.SSLError as exc:
        raise _tls_problem(exc, where) from exc
    except ConnectionRefusedError as exc:
        raise BrokerUnreachable(
            f"the broker at {where} refused the connection (down, or wrong port)"
        ) from exc
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {where}: {exc.strerror or exc}") from exc
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise BrokerUnreachable(f"the broker at {where} did not answer within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if result[0] != "Success":
        raise _explain_refusal(target, where, result[0])
    return f"connected to {where} as {target.device_id} (mTLS)"


def _explain_refusal(target: BrokerTarget, where: str, reason: str) -> ProvisionError:
    """Find out why the broker closed the connection: with TLS 1.3 a refused client certificate is
    only reported (as a TLS alert) after the handshake, so read that alert on a bare TLS socket."""
    import socket

    context = ssl.create_default_context(cafile=str(target.ca))
    context.load_cert_chain(str(target.cert), str(target.key))
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            tls.settimeout(1.0)
            tls.recv(1)
    except ssl.SSLError as exc:
        return _tls_problem(exc, where)
    except OSError:
        pass
    return CertificateProblem(f"the broker at {where} refused this device: {reason}")
