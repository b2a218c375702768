"""mosquitto configuration for the city broker: mTLS for every client, a per-identity access list
checked at subscribe time, and a fleet listener that admits fleet services only.

Identity is the certificate: ``use_identity_as_username`` makes the CN the MQTT username; the PKI
only signs device CNs that are valid device ids (never ``fleet-...``) and service CNs that are
``fleet-...`` (with ``OU=fleet services``).

Access (``fleet.dynsec``: mosquitto's dynamic-security plugin, generated from the PKI inventory):

- a device publishes its own status, telemetry, events/#, shadow/reported, commands/res, rpc/req,
  and receives and may subscribe to exactly its own shadow/desired, commands/req, rpc/res. Any
  other SUBSCRIBE (another device, ``+``, ``#``, ``$share/...``, ``$SYS/#``, ``$CONTROL/...``) is
  refused when it is made (SUBACK 0x87) and never added;
- fleet services read every device publication (also through ``$share/GROUP/...``) and write
  commands/req, shadow/desired, rpc/res of any device; broker admins (``fleet-admin``) only manage
  the access list through ``$CONTROL/dynamic-security/v1``;
- an identity that is not listed (revoked, unknown) gets nothing: no ``acl_file`` runs behind the
  plugin, and mosquitto denies when every check defers.

The plugin reads its file only at start: a running broker is brought up to date with ``$CONTROL``
commands (``BrokerAccess``: ``cityedge fleet broker-sync``, the enrolment API, ``fleet revoke``).

Listeners:

- the device listener (public): mTLS, ``crlfile``, ``use_username_as_clientid true`` so that a
  device cannot take over (disconnect, drain) another device's session by using its id;
- the fleet listener (internal, default 127.0.0.1): mTLS whose only trust anchor is
  ``fleet-ca.pem`` (``CityPKI.service_listener_anchor_pem``): a device certificate fails the TLS
  handshake there, so no device can pick a client id on it; client ids are free for services
  (several workers share one identity, ``fleet revoke --kick`` takes over a device's id);
- or ``fleet_listener="plain-localhost"``: plain MQTT on 127.0.0.1 with a password per service
  (trade-off: no TLS, so anyone who can read loopback traffic or the password file on the broker
  host has fleet rights; fine when the fleet runs on the broker host, wrong anywhere else).
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from fleet.broker import BrokerConfig, TlsListener
from fleet.dynsec import (
    DEVICE_READ,
    DEVICE_WRITE,
    FLEET_WRITE,
    AccessList,
    BrokerAccessError,
    BrokerEndpoint,
    Changes,
    DynsecAdmin,
    access_list,
    find_dynsec_plugin,
    to_json,
)
from fleet.pki import CityPKI
from fleet.pki_store import IssuedCert
from protocol.topics import DEFAULT_PREFIX

__all__ = [
    "DEVICE_READ",
    "DEVICE_WRITE",
    "FLEET_WRITE",
    "BrokerAccess",
    "BrokerAccessError",
    "BrokerSecurity",
    "acl_text",
    "local_broker_config",
    "pki_access_list",
    "refresh_broker_files",
    "refresh_local_broker",
    "write_broker_files",
]

DYNSEC_DIR = "dynsec"
DYNSEC_FILE = "dynamic-security.json"
FLEET_CA_FILE = "fleet-ca.pem"


class BrokerSecurity(BaseModel):
    """How the city broker is exposed; ``cityedge fleet broker-config`` builds it from options."""

    model_config = ConfigDict(extra="forbid")

    topic_prefix: str = Field(
        default=DEFAULT_PREFIX, min_length=1, description="Topic prefix of the contract."
    )
    device_bind: str = Field(default="0.0.0.0", description="Address of the device (public) mTLS listener.")
    device_port: int = Field(default=8883, ge=0, le=65535, description="Port of the device mTLS listener.")
    fleet_listener: Literal["mtls", "plain-localhost", "none"] = Field(
        default="mtls", description="Listener for fleet services: internal mTLS, plain on 127.0.0.1, or none."
    )
    fleet_bind: str = Field(default="127.0.0.1", description="Address of the fleet listener (never public).")
    fleet_port: int = Field(default=8884, ge=0, le=65535, description="Port of the fleet listener.")
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        min_length=1,
        description="DNS names / IP addresses in the broker's server certificate.",
    )
    persistence_dir: str = Field(
        default="/var/lib/mosquitto/", min_length=1, description="mosquitto persistence_location."
    )
    services: list[str] | None = Field(
        default=None,
        description="Fleet service identities to grant; None: every valid fleet-* cert in the PKI.",
    )
    broker_admins: list[str] = Field(
        default_factory=lambda: ["fleet-admin"],
        description="Service identities that manage the access list ($CONTROL) and nothing else.",
    )
    dynsec_plugin: str | None = Field(
        default=None, description="Path of mosquitto_dynamic_security.so; None: found at write time."
    )


def service_identities(records: Iterable[IssuedCert]) -> list[str]:
    """Names of services with at least one certificate that is not revoked."""
    return sorted({r.subject for r in records if r.kind == "service" and not r.revoked})


def device_identities(records: Iterable[IssuedCert]) -> list[str]:
    """Devices with at least one certificate that is not revoked."""
    return sorted({r.subject for r in records if r.kind == "device" and not r.revoked})


def revoked_identities(records: Iterable[IssuedCert]) -> list[str]:
    """Subjects whose every certificate is revoked (a re-enrolled device is not listed)."""
    rows = list(records)
    live = {r.subject for r in rows if not r.revoked}
    return sorted({r.subject for r in rows if r.revoked and r.subject not in live and r.kind != "server"})


def pki_access_list(
    pki: CityPKI, security: BrokerSecurity | None = None, *, extra_devices: Iterable[str] = ()
) -> AccessList:
    """The broker's access list from the PKI inventory (``extra_devices``: about to be issued)."""
    security = security or BrokerSecurity()
    records = pki.certificates()
    services = security.services if security.services is not None else service_identities(records)
    revoked = set(revoked_identities(records))
    return access_list(
        devices=[*device_identities(records), *extra_devices],
        services=[name for name in services if name not in revoked],
        admins=security.broker_admins,
        prefix=security.topic_prefix,
    )


def dynsec_text(access: AccessList) -> str:
    return json.dumps(to_json(access), indent=1) + "\n"


def acl_text(*, services: Sequence[str], revoked: Sequence[str] = (), prefix: str = DEFAULT_PREFIX) -> str:
    """A mosquitto ``acl_file`` with the same publish/deliver rights, for brokers run without the
    dynamic-security plugin (benchmarks, broker directories of earlier releases until they are
    regenerated). It does not isolate subscriptions: mosquitto 2.0 grants every SUBSCRIBE under
    ``acl_file`` (a device could join ``$share/...`` groups), so the city broker no longer uses it."""
    devices = f"{prefix}/devices"
    lines = [
        "# cityedge broker ACL, generated by `cityedge fleet broker-config`: do not edit by hand.",
        "# No topic lines before the first 'user': anonymous clients get nothing.",
        "",
    ]
    for name in services:
        if name in revoked:
            continue
        lines += [f"# fleet service identity {name}", f"user {name}", f"topic deny {devices}/{name}/#"]
        lines += [f"topic read {devices}/+/{family}" for family in DEVICE_WRITE]
        lines += [f"topic write {devices}/+/{family}" for family in FLEET_WRITE]
        lines.append("")
    for name in revoked:
        lines += [f"# revoked: {name}", f"user {name}", "topic deny #", ""]
    lines.append("# devices: username = certificate CN = device id; only their own subtree")
    lines += [f"pattern write {devices}/%u/{family}" for family in DEVICE_WRITE]
    lines += [f"pattern read {devices}/%u/{family}" for family in DEVICE_READ]
    return "\n".join(lines) + "\n"


def mosquitto_password_line(username: str, password: str, *, iterations: int = 101) -> str:
    """A ``mosquitto_passwd`` line (PBKDF2-SHA512, the ``$7$`` format of mosquitto 2.0)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _tls_lines(port: int, bind: str, files: Path, *, cafile: str, clientid_is_username: bool) -> list[str]:
    lines = [
        f"listener {port} {bind}",
        f"cafile {files / cafile}",
        f"certfile {files / 'server.crt'}",
        f"keyfile {files / 'server.key'}",
        f"crlfile {files / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
    ]
    if clientid_is_username:
        lines.append("use_username_as_clientid true")
    return lines


def mosquitto_conf_text(security: BrokerSecurity, files: Path) -> str:
    """A complete mosquitto.conf for the city broker whose files live in ``files``."""
    lines = [
        "# cityedge city broker, generated by `cityedge fleet broker-config`.",
        "# Reload after a revocation: systemctl reload mosquitto (SIGHUP re-reads ACL, CRL, certs).",
        "per_listener_settings false",
        "allow_anonymous false",
        "# Access list checked at subscribe, publish and delivery time (fleet.dynsec). The plugin",
        "# reads this file at start only; `cityedge fleet broker-sync` updates a running broker.",
        f"plugin {security.dynsec_plugin or find_dynsec_plugin()}",
        f"plugin_opt_config_file {files / DYNSEC_DIR / DYNSEC_FILE}",
        "persistence true",
        f"persistence_location {security.persistence_dir}",
        "connection_messages true",
        "log_dest syslog",
        "# Without it, TLS 1.3 session tickets + Nagle + delayed ACK add ~40 ms to every CONNACK.",
        "set_tcp_nodelay true",
        "",
        "# devices (public): mTLS, CRL, client id forced to the certificate CN",
        *_tls_lines(
            security.device_port, security.device_bind, files, cafile="ca.pem", clientid_is_username=True
        ),
    ]
    if security.fleet_listener == "mtls":
        lines += [
            "",
            "# fleet services (internal only): mTLS trusting fleet-ca.pem, which admits service",
            "# certificates (OU=fleet services) only; workers choose their client ids",
        ]
        lines += _tls_lines(
            security.fleet_port, security.fleet_bind, files, cafile=FLEET_CA_FILE, clientid_is_username=False
        )
    elif security.fleet_listener == "plain-localhost":
        lines += [
            "",
            "# fleet services on this host only: plain MQTT + password (no TLS; see brokerconf docs)",
            f"password_file {files / 'passwd'}",
            f"listener {security.fleet_port} 127.0.0.1",
        ]
    return "\n".join(lines) + "\n"


def _chmod_for_mosquitto(path: Path, mode: int) -> None:
    """``mode`` and, when run as root, group ``mosquitto`` so the broker user can read the file."""
    os.chmod(path, mode)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            os.chown(path, 0, grp.getgrnam("mosquitto").gr_gid)


SETTINGS_FILE = "broker-security.json"


def _secret_write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write; ``mode`` and group mosquitto are set before the file appears."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    _chmod_for_mosquitto(Path(tmp), mode)
    os.replace(tmp, path)


def _anchor_current(path: Path, pki: CityPKI) -> bool:
    """True when ``path`` holds a fleet listener anchor for the PKI's current issuing CA (kept,
    so that re-running broker-config gives the same files)."""
    try:
        anchor = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    issuing = x509.load_pem_x509_certificate(pki.issuing_cert_pem())
    return (
        anchor.subject == issuing.subject
        and anchor.public_key() == issuing.public_key()
        and anchor.not_valid_after_utc >= issuing.not_valid_after_utc
    )


def write_broker_files(
    pki: CityPKI, out: Path, security: BrokerSecurity, *, renew_server_cert: bool = False
) -> dict[str, str]:
    """Write mosquitto.conf, dynsec/dynamic-security.json, ca.pem, fleet-ca.pem, crl.pem,
    server.crt/.key (and passwd for the plain fleet listener) into ``out``, readable by group
    ``mosquitto`` (keys 0640, rest 0644; the dynsec folder is writable by the broker, which
    rewrites its file after every ``$CONTROL`` change).

    The server key is kept across runs unless ``renew_server_cert``. Returns the passwords of
    services new to the plain-localhost listener (shown once; existing ones are kept).
    """
    out = out.resolve()  # mosquitto.conf needs absolute paths
    if security.dynsec_plugin is None:
        security = security.model_copy(update={"dynsec_plugin": find_dynsec_plugin()})
    out.mkdir(parents=True, exist_ok=True)
    _chmod_for_mosquitto(out, 0o750)
    (out / DYNSEC_DIR).mkdir(exist_ok=True)
    _chmod_for_mosquitto(out / DYNSEC_DIR, 0o770)
    if renew_server_cert or not (out / "server.key").exists():
        key, cert = pki.issue_server_cert(security.server_names)
        _secret_write(out / "server.key", key, 0o640)
        _secret_write(out / "server.crt", cert, 0o644)
    _secret_write(out / "ca.pem", pki.trust_bundle_pem(), 0o644)
    if not _anchor_current(out / FLEET_CA_FILE, pki):
        _secret_write(out / FLEET_CA_FILE, pki.service_listener_anchor_pem(), 0o644)
    passwords: dict[str, str] = {}
    if security.fleet_listener == "plain-localhost":
        names = security.services if security.services is not None else service_identities(pki.certificates())
        old = (out / "passwd").read_text().splitlines() if (out / "passwd").exists() else []
        kept = {line.split(":", 1)[0]: line for line in old if line.split(":", 1)[0] in names}
        passwords = {name: secrets.token_urlsafe(24) for name in names if name not in kept}
        lines = [*kept.values(), *(mosquitto_password_line(n, pw) for n, pw in passwords.items())]
        _secret_write(out / "passwd", "".join(line + "\n" for line in lines).encode(), 0o640)
    _secret_write(out / "mosquitto.conf", mosquitto_conf_text(security, out).encode(), 0o644)
    _secret_write(out / SETTINGS_FILE, security.model_dump_json(indent=2).encode(), 0o644)
    refresh_broker_files(pki, out)
    with contextlib.suppress(FileNotFoundError):
        (out / "acl").unlink()  # written by earlier versions; the broker no longer reads it
    return passwords


def broker_settings(out: Path) -> BrokerSecurity:
    """The options a broker directory was made with (``broker-security.json``)."""
    try:
        return BrokerSecurity.model_validate_json((out / SETTINGS_FILE).read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{out} is not a broker directory made by `cityedge fleet broker-config` (no {SETTINGS_FILE})"
        ) from exc


def refresh_broker_files(pki: CityPKI, out: Path) -> None:
    """Rewrite the CRL and the access list file in a broker directory made by
    ``write_broker_files`` (after a revocation or a new identity); then reload the broker (SIGHUP:
    new CRL) and bring its access list up to date (``BrokerAccess.sync``: the plugin reads its file
    only at start)."""
    security = broker_settings(out)
    _secret_write(out / "crl.pem", pki.crl_pem(), 0o644)
    if (out / DYNSEC_DIR).is_dir():
        _secret_write(
            out / DYNSEC_DIR / DYNSEC_FILE, dynsec_text(pki_access_list(pki, security)).encode(), 0o660
        )
    elif (out / "acl").exists():  # a directory of an earlier version: keep its acl_file current
        records = pki.certificates()
        services = security.services if security.services is not None else service_identities(records)
        text = acl_text(services=services, revoked=revoked_identities(records), prefix=security.topic_prefix)
        _secret_write(out / "acl", text.encode(), 0o644)


def local_broker_config(pki: CityPKI, files: Path, security: BrokerSecurity | None = None) -> BrokerConfig:
    """A ``fleet.broker.BrokerConfig`` for tests and the demo: loopback, free ports, no plain
    listener; ``config.tls`` is the device listener and ``config.extra_tls[0]`` (if any) the fleet
    one (trusting ``fleet-ca.pem`` only); the access list of the PKI as the plugin's file.
    Certificates are written to ``files``."""
    security = security or BrokerSecurity(device_port=0, fleet_port=0)
    files.mkdir(parents=True, exist_ok=True)
    (files / FLEET_CA_FILE).write_bytes(pki.service_listener_anchor_pem())
    key, cert = pki.issue_server_cert(security.server_names)
    (files / "server.key").write_bytes(key)
    os.chmod(files / "server.key", 0o600)
    (files / "server.crt").write_bytes(cert)
    (files / "ca.pem").write_bytes(pki.trust_bundle_pem())
    (files / "crl.pem").write_bytes(pki.crl_pem())

    def listener(port: int, clientid: bool, cafile: str) -> TlsListener:
        return TlsListener(
            port=port,
            cafile=files / cafile,
            certfile=files / "server.crt",
            keyfile=files / "server.key",
            crlfile=files / "crl.pem",
            use_username_as_clientid=clientid,
        )

    if security.fleet_listener == "plain-localhost":
        raise ValueError("local_broker_config supports fleet_listener 'mtls' or 'none'")
    extra = [listener(security.fleet_port, False, FLEET_CA_FILE)] if security.fleet_listener == "mtls" else []
    return BrokerConfig(
        allow_anonymous=False,
        dynsec_json=dynsec_text(pki_access_list(pki, security)),
        dynsec_plugin=security.dynsec_plugin or find_dynsec_plugin(),
        tls=listener(security.device_port, True, "ca.pem"),
        extra_tls=extra,
        plain_listener=False,
        run_as="root" if os.geteuid() == 0 else None,
        extra=["set_tcp_nodelay true"],
    )


def refresh_local_broker(pki: CityPKI, config: BrokerConfig, security: BrokerSecurity | None = None) -> None:
    """After a revocation: new CRL and access list file into ``config`` (then call
    ``broker.reload()`` for the CRL and ``BrokerAccess``/``DynsecAdmin`` for the access list)."""
    if config.tls is None or config.tls.crlfile is None:
        raise ValueError("this broker config has no CRL file")
    config.tls.crlfile.write_bytes(pki.crl_pem())
    config.dynsec_json = dynsec_text(
        pki_access_list(pki, security or BrokerSecurity(device_port=0, fleet_port=0))
    )


class BrokerAccess:
    """Keeps a running city broker's access list in step with the PKI inventory, through the
    fleet listener with a broker admin identity (``identity``: a folder with cert.pem and key.pem,
    as ``cityedge fleet pki service --name fleet-admin`` writes it).

    ``grant_device`` before a device's certificate is issued (the enrolment API), ``update`` after
    identities were revoked (deleting a client also disconnects it), ``sync`` for everything.
    """

    def __init__(
        self,
        pki: CityPKI,
        broker_dir: Path,
        identity: Path | None = None,
        *,
        endpoint: BrokerEndpoint | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.pki = pki
        self.broker_dir = Path(broker_dir)
        self.security = broker_settings(self.broker_dir)
        if endpoint is None:
            if identity is None:
                raise ValueError("BrokerAccess needs an admin identity folder or an endpoint")
            endpoint = self.endpoint_for(self.broker_dir, self.security, Path(identity))
        self.endpoint = endpoint
        self.timeout = timeout

    @staticmethod
    def endpoint_for(broker_dir: Path, security: BrokerSecurity, identity: Path) -> BrokerEndpoint:
        if security.fleet_listener != "mtls":
            raise BrokerAccessError(
                f"the broker in {broker_dir} has no mTLS fleet listener ({security.fleet_listener}): "
                "its access list changes only when it restarts (it reads dynsec/dynamic-security.json then)"
            )
        host = "127.0.0.1" if security.fleet_bind in ("0.0.0.0", "::") else security.fleet_bind
        return BrokerEndpoint(
            host, security.fleet_port, broker_dir / "ca.pem", identity / "cert.pem", identity / "key.pem"
        )

    def _admin(self) -> DynsecAdmin:
        return DynsecAdmin(self.endpoint, timeout=self.timeout)

    def sync(self) -> Changes:
        """Everything from the inventory (identities the broker lists but the PKI no longer
        vouches for are deleted and disconnected)."""
        with self._admin() as admin:
            return admin.converge(pki_access_list(self.pki, self.security))

    def grant_device(self, device_id: str) -> Changes:
        """Give ``device_id`` its own subtree now (idempotent), before its certificate exists."""
        desired = pki_access_list(self.pki, self.security, extra_devices=[device_id])
        with self._admin() as admin:
            return admin.converge(desired, only=[device_id])

    def update(self, names: Iterable[str]) -> Changes:
        """Bring these identities in line with the inventory (e.g. after a revocation)."""
        with self._admin() as admin:
            return admin.converge(pki_access_list(self.pki, self.security), only=names)
