"""The city broker's access contract for an EMQX 5 cluster (``deploy/emqx/``), from the same tables
as mosquitto's (``fleet.dynsec``: ``DEVICE_WRITE``, ``DEVICE_READ``, ``FLEET_WRITE``).

EMQX checks its authorization sources when a client subscribes and when it publishes; with
``authorization.no_match = deny`` whatever no rule allows is refused (SUBACK 0x87, like mosquitto's
dynamic-security plugin). The ACL file is a list of Erlang terms read top to bottom, first match
wins:

1. revoked identities (every certificate revoked in the PKI): nothing at all;
2. fleet services, by name: subscribe to every device publication, also through
   ``$share/GROUP/...`` (the workers' group), and publish commands, desired state and RPC answers;
3. anyone else, i.e. a device: never a shared subscription, ``#``, ``+/#`` or ``$SYS/#``;
4. a device publishes its own publications and subscribes to exactly its own desired state,
   commands and RPC answers: ``${username}`` is the certificate CN (``peer_cert_as_username =
   cn`` on the device listener's zone, ``peer_cert_as_clientid = cn`` too, so a device cannot take
   over another's session);
5. everything else is denied.

``cityedge fleet emqx-config`` writes it from the PKI inventory; the file in ``deploy/emqx/acl.conf``
is what it writes for a PKI with the one service ``fleet-ingest`` and nothing revoked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fleet.brokerconf import FLEET_CA_FILE, revoked_identities, service_identities
from fleet.dynsec import DEVICE_READ, DEVICE_WRITE, FLEET_WRITE
from fleet.pki import CityPKI
from protocol.atomic import atomic_write_bytes
from protocol.topics import DEFAULT_PREFIX

HEADER = """\
%% EMQX 5 authorization file of the cityedge city broker (cityedge fleet emqx-config; fleet/emqxconf.py).
%% Read top to bottom, first match wins; authorization.no_match = deny refuses the rest.
"""


def _topics(items: Sequence[str]) -> str:
    return "[" + ", ".join(item if item.startswith("{") else json.dumps(item) for item in items) + "]"


def _rule(permission: str, who: str, action: str, topics: Sequence[str]) -> str:
    return f"{{{permission}, {who}, {action}, {_topics(topics)}}}.\n"


def emqx_acl_text(
    *, services: Sequence[str], revoked: Sequence[str] = (), prefix: str = DEFAULT_PREFIX
) -> str:
    """The ACL file for EMQX 5: services by name, devices by ``${username}`` (their CN)."""
    devices = f"{prefix}/devices/+"
    own = f"{prefix}/devices/${{username}}"
    lines = [HEADER, "\n%% 1. revoked identities get nothing\n"]
    lines += [
        _rule("deny", f"{{username, {json.dumps(name)}}}", "all", ["#"]) for name in sorted(set(revoked))
    ]
    lines.append("\n%% 2. fleet services: every device publication (also as the workers' shared group)\n")
    reads = [f"{devices}/{f}" for f in DEVICE_WRITE] + [f"$share/+/{devices}/{f}" for f in DEVICE_WRITE]
    writes = [f"{devices}/{f}" for f in FLEET_WRITE]
    for name in sorted(set(services) - set(revoked)):
        who = f"{{username, {json.dumps(name)}}}"
        lines += [_rule("allow", who, "subscribe", reads), _rule("allow", who, "publish", writes)]
    lines.append("\n%% 3. nobody else joins a shared group or subscribes to everything\n")
    lines.append(
        _rule("deny", "all", "subscribe", ["$share/#", "$queue/#", "$SYS/#", '{eq, "#"}', '{eq, "+/#"}'])
    )
    lines.append("\n%% 4. a device: its own subtree only (${username} = its certificate CN)\n")
    lines.append(_rule("allow", "all", "publish", [f"{own}/{f}" for f in DEVICE_WRITE]))
    lines.append(_rule("allow", "all", "subscribe", [f"{own}/{f}" for f in DEVICE_READ]))
    lines.append("\n%% 5. nothing else\n{deny, all}.\n")
    return "".join(lines)


def write_emqx_files(
    pki: CityPKI, out: Path, hostnames: Sequence[str], *, prefix: str = DEFAULT_PREFIX
) -> tuple[list[str], list[str]]:
    """Write what the EMQX nodes mount into ``out``: ``acl.conf`` and ``certs/`` (``server.crt``,
    ``server.key`` kept across runs, ``ca.pem`` for the device listener, ``fleet-ca.pem`` for the
    fleet listener). Returns (services, revoked identities) of the ACL."""
    records = pki.certificates()
    services, revoked = service_identities(records), revoked_identities(records)
    certs = out / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    if not (certs / "server.key").exists():
        key, cert = pki.issue_server_cert(list(hostnames))
        atomic_write_bytes(certs / "server.key", key, 0o640)
        atomic_write_bytes(certs / "server.crt", cert)
    atomic_write_bytes(certs / "ca.pem", pki.trust_bundle_pem())
    atomic_write_bytes(certs / FLEET_CA_FILE, pki.service_listener_anchor_pem())
    atomic_write_bytes(
        out / "acl.conf", emqx_acl_text(services=services, revoked=revoked, prefix=prefix).encode()
    )
    return services, revoked
