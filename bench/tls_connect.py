"""Cost of mTLS on the city broker: connection set-up rate and QoS 1 throughput, TLS vs plain TCP.

One mosquitto with both listeners (the device mTLS listener of ``fleet.brokerconf`` with its CRL
and ACL, and a plain TCP listener where clients give the same usernames, so both paths run the
same ACL), measured in the same run, alternating, medians of ``--runs``:

* connect rate: sequential connect + CONNACK + DISCONNECT per second (full TLS handshakes with an
  ECDSA P-256 device certificate; no session resumption, as after a device reboot);
* QoS 1 throughput: one device publishes ``--messages`` telemetry messages at QoS 1 to a fleet
  subscriber (QoS 1) on the same transport; messages per second until the subscriber has all.

    python -m bench.tls_connect [--runs 3] [--connects 200] [--messages 5000] [--payload 256]
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import parser, report
from fleet.broker import BrokerConfig, MosquittoBroker, TlsListener
from fleet.brokerconf import acl_text
from fleet.pki import CityPKI
from hw.keystore import FileKeyStore
from protocol.topics import Topics

DEVICE = "bench-dev-0001"
FLEET = "fleet-bench"


@dataclass(frozen=True)
class Endpoint:
    port: int
    context: ssl.SSLContext | None  # None: plain TCP (username only)


def _context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _client(ep: Endpoint, name: str, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if ep.context is not None:
        client.tls_set_context(ep.context)
    else:
        client.username_pw_set(name)
    client.max_inflight_messages_set(100)
    return client


def _connect_sync(client: mqtt.Client, port: int) -> None:
    got = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: got.set()
    client.connect("127.0.0.1", port, keepalive=60)
    while not got.is_set():
        client.loop(timeout=0.001)


def connect_rate(ep: Endpoint, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        client = _client(ep, DEVICE, DEVICE)
        _connect_sync(client, ep.port)
        client.disconnect()
        client.loop(timeout=0.01)
    return count / (time.perf_counter() - start)


def throughput(ep: Endpoint, fleet_ep: Endpoint, messages: int, payload: bytes) -> float:
    topic = Topics().telemetry(DEVICE)
    received = 0
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received >= messages:
            done.set()

    sub = _client(fleet_ep, FLEET, "fleet-bench-sub")
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    _connect_sync(sub, fleet_ep.port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    subscribed.wait(5)
    pub = _client(ep, DEVICE, DEVICE)
    _connect_sync(pub, ep.port)
    pub.loop_start()
    start = time.perf_counter()
    for _ in range(messages):
        pub.publish(topic, payload, qos=1)
    finished = done.wait(120)
    elapsed = time.perf_counter() - start
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()
    if not finished:
        raise RuntimeError(f"subscriber got {received} of {messages} messages")
    return messages / elapsed


def _setup(root: Path, nodelay: bool) -> tuple[MosquittoBroker, Endpoint, Endpoint, Endpoint, Endpoint]:
    pki = CityPKI.init(root / "pki")
    store = FileKeyStore.create(root / "dev" / "key.pem", algorithm="p256")
    (root / "dev" / "cert.pem").write_bytes(pki.sign_device_csr(store.csr(DEVICE), DEVICE))
    fkey, fcert = pki.issue_service_identity(FLEET)
    (root / "svc").mkdir()
    (root / "svc" / "key.pem").write_bytes(fkey)
    (root / "svc" / "cert.pem").write_bytes(fcert)
    skey, scert = pki.issue_server_cert(["localhost", "127.0.0.1"])
    for name, data in {"server.key": skey, "server.crt": scert, "ca.pem": pki.trust_bundle_pem()}.items():
        (root / name).write_bytes(data)
    (root / "crl.pem").write_bytes(pki.crl_pem())
    tls = TlsListener(0, root / "ca.pem", root / "server.crt", root / "server.key", crlfile=root / "crl.pem")
    tls.use_username_as_clientid = True
    config = BrokerConfig(
        allow_anonymous=True,
        acl_text=acl_text(services=[FLEET]),
        tls=tls,
        run_as="root",
        extra=["set_tcp_nodelay true"] if nodelay else [],
    )
    broker = MosquittoBroker(root / "broker", config).start()
    assert config.tls is not None
    dev_tls = Endpoint(config.tls.port, _context(root / "ca.pem", root / "dev" / "cert.pem", store.path))
    fleet_tls = Endpoint(
        config.tls.port, _context(root / "ca.pem", root / "svc" / "cert.pem", root / "svc" / "key.pem")
    )
    plain = Endpoint(config.port, None)
    return broker, dev_tls, fleet_tls, plain, plain


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--connects", type=int, default=200, help="connections per run (default 200)")
    p.add_argument("--messages", type=int, default=5000, help="QoS 1 messages per run (default 5000)")
    p.add_argument("--payload", type=int, default=256, help="payload bytes (default 256)")
    p.add_argument(
        "--nagle",
        action="store_true",
        help="leave mosquitto's default set_tcp_nodelay false (slow TLS CONNACK)",
    )
    args = p.parse_args()
    payload = b"x" * args.payload
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        broker, dev_tls, fleet_tls, dev_plain, fleet_plain = _setup(Path(tmp), nodelay=not args.nagle)
        try:
            conn = {"tls": [], "plain": []}  # type: dict[str, list[float]]
            thr = {"tls": [], "plain": []}  # type: dict[str, list[float]]
            for _ in range(args.runs):
                conn["plain"].append(connect_rate(dev_plain, args.connects))
                conn["tls"].append(connect_rate(dev_tls, args.connects))
                thr["plain"].append(throughput(dev_plain, fleet_plain, args.messages, payload))
                thr["tls"].append(throughput(dev_tls, fleet_tls, args.messages, payload))
        finally:
            broker.stop()
    nagle = "default (Nagle on)" if args.nagle else "true (as fleet.brokerconf writes)"
    print(
        f"mosquitto 2.0.11, {ssl.OPENSSL_VERSION}, device key ECDSA P-256, TLS 1.3; set_tcp_nodelay {nagle}"
    )
    report("connect+CONNACK (mTLS)", "conn/s", conn["tls"], conn["plain"], baseline_name="plain TCP")
    report(
        f"QoS 1 publish->subscriber, {args.payload} B (mTLS)",
        "msg/s",
        thr["tls"],
        thr["plain"],
        baseline_name="plain TCP",
    )


if __name__ == "__main__":
    main()
