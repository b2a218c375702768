"""The city broker's access list, kept by mosquitto's dynamic-security plugin.

What each identity (certificate CN = MQTT username) may publish, receive and **subscribe to**;
mosquitto checks it when a client subscribes (a refused filter gets SUBACK 0x87 "not authorized"
and is never added), when it publishes and when a message is delivered.

Why the plugin and not ``acl_file`` (mosquitto 2.0.11): ``acl_file`` grants every SUBSCRIBE and
only filters delivery, so a device could subscribe to ``$share/fleet/...`` and join the fleet's
worker group; the broker then handed it some of other devices' messages, dropped them at
delivery, and they were lost. What the plugin of 2.0.11 does and does not do shapes this module:

- it looks clients up by username, which ``use_identity_as_username`` sets from the certificate
  (it never authenticates them: TLS did). It has no ``%u`` patterns, so every device gets a role
  of its own with its literal topics (``device_acls``); fleet services share one role;
- an identity it does not list gets nothing: the broker runs no ``acl_file`` behind it, and when
  every check defers mosquitto denies. A revoked identity is simply left out;
- it reads its JSON file only when the broker starts (SIGHUP does not reload it) and rewrites the
  file after every change made through ``$CONTROL/dynamic-security/v1``. The fleet therefore
  writes the file from the PKI inventory (``fleet.brokerconf``, ``cityedge fleet broker-config``)
  and brings a running broker to the same state with ``$CONTROL`` commands (``DynsecAdmin``): a
  device is added before its certificate is issued, revoked identities are deleted (which also
  disconnects them). ``plan`` computes the commands; it is pure.

Only the identities named as broker admins (``fleet-admin`` by default) may send ``$CONTROL``
commands.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocol.topics import DEFAULT_PREFIX

# What a device may do in its own subtree (relative to ``<prefix>/devices/<id>``); the contract.
DEVICE_WRITE = ("status", "telemetry", "events/#", "shadow/reported", "commands/res", "rpc/req")
DEVICE_READ = ("shadow/desired", "commands/req", "rpc/res")
FLEET_WRITE = ("commands/req", "shadow/desired", "rpc/res")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
SERVICE_ROLE = "fleet-service"
ADMIN_ROLE = "broker-admin"
DEVICE_ROLE_PREFIX = "device:"
DEFAULT_ACCESS: Mapping[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib/mosquitto",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib/mosquitto",
)
BATCH = 200  # $CONTROL commands per message


class BrokerAccessError(RuntimeError):
    """The broker's access list could not be read or changed (unreachable, refused, bad answer)."""


def find_dynsec_plugin() -> str:
    """Path of mosquitto's dynamic-security plugin, or BrokerAccessError saying how to get it."""
    for folder in PLUGIN_DIRS:
        path = Path(folder) / PLUGIN_NAME
        if path.is_file():
            return str(path)
    raise BrokerAccessError(
        f"mosquitto's dynamic-security plugin ({PLUGIN_NAME}) was not found in {', '.join(PLUGIN_DIRS)}; "
        "install mosquitto 2.0 or newer from your distribution (Debian: apt-get install mosquitto) "
        "or pass its path with --dynsec-plugin"
    )


# ---- the access list (pure) ---------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Acl:
    """One ACL of a role, as the plugin stores it (one per acltype and topic)."""

    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "priority": self.priority, "allow": self.allow}


RoleRef = tuple[str, int]  # (rolename, priority)


@dataclass(frozen=True)
class AccessList:
    """Roles (name -> ACLs), clients (username -> roles) and the default access of the plugin."""

    roles: Mapping[str, frozenset[Acl]] = field(default_factory=dict)
    clients: Mapping[str, frozenset[RoleRef]] = field(default_factory=dict)
    default_access: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULT_ACCESS))

    def only(self, usernames: Iterable[str]) -> AccessList:
        """The part of this list about ``usernames`` and the roles they hold."""
        names = set(usernames)
        clients = {u: r for u, r in self.clients.items() if u in names}
        role_names = {name for refs in clients.values() for name, _ in refs}
        return AccessList(
            {n: a for n, a in self.roles.items() if n in role_names}, clients, self.default_access
        )


def device_role(device_id: str) -> str:
    return DEVICE_ROLE_PREFIX + device_id


def device_acls(device_id: str, prefix: str = DEFAULT_PREFIX) -> frozenset[Acl]:
    """A device publishes its own publications, and receives and subscribes to exactly its own
    desired state, commands and RPC answers (literal topics: no wildcard is granted)."""
    root = f"{prefix}/devices/{device_id}"
    return frozenset(
        [Acl("publishClientSend", f"{root}/{family}") for family in DEVICE_WRITE]
        + [Acl("publishClientReceive", f"{root}/{family}") for family in DEVICE_READ]
        + [Acl("subscribeLiteral", f"{root}/{family}") for family in DEVICE_READ]
    )


def service_acls(prefix: str = DEFAULT_PREFIX) -> frozenset[Acl]:
    """Fleet services read every device publication (also through ``$share/GROUP/...``) and send
    commands, desired state and RPC answers to any device; nothing else (no ``#``, no ``$SYS``)."""
    devices = f"{prefix}/devices/+"
    return frozenset(
        [Acl("publishClientReceive", f"{devices}/{family}") for family in DEVICE_WRITE]
        + [Acl("subscribePattern", f"{devices}/{family}") for family in DEVICE_WRITE]
        + [Acl("subscribePattern", f"$share/+/{devices}/{family}") for family in DEVICE_WRITE]
        + [Acl("publishClientSend", f"{devices}/{family}") for family in FLEET_WRITE]
    )


def admin_acls() -> frozenset[Acl]:
    """Broker admins send ``$CONTROL`` commands and read the answers; nothing else."""
    return frozenset(
        [
            Acl("publishClientSend", CONTROL_TOPIC),
            Acl("publishClientReceive", RESPONSE_TOPIC),
            Acl("subscribeLiteral", RESPONSE_TOPIC),
        ]
    )


def access_list(
    *,
    devices: Iterable[str],
    services: Iterable[str],
    admins: Iterable[str] = (),
    prefix: str = DEFAULT_PREFIX,
) -> AccessList:
    """The access list of the city broker: each device in its own subtree, services with the
    service role, admins (which must be services too) with the admin role only."""
    admin_set = set(admins)
    roles: dict[str, frozenset[Acl]] = {}
    clients: dict[str, frozenset[RoleRef]] = {}
    for device in sorted(set(devices)):
        roles[device_role(device)] = device_acls(device, prefix)
        clients[device] = frozenset({(device_role(device), 0)})
    service_names = sorted(set(services))
    if any(name not in admin_set for name in service_names):
        roles[SERVICE_ROLE] = service_acls(prefix)
    if admin_set & set(service_names):
        roles[ADMIN_ROLE] = admin_acls()
    for name in service_names:
        clients[name] = frozenset({(ADMIN_ROLE if name in admin_set else SERVICE_ROLE, 0)})
    return AccessList(roles, clients)


def to_json(access: AccessList) -> dict[str, Any]:
    """The plugin's configuration file (``plugin_opt_config_file``), sorted: the same inventory
    always gives the same file."""
    return {
        "defaultACLAccess": dict(access.default_access),
        "clients": [
            {
                "username": name,
                "textname": "cityedge identity (certificate CN)",
                "roles": [{"rolename": r, "priority": p} for r, p in sorted(access.clients[name])],
            }
            for name in sorted(access.clients)
        ],
        "groups": [],
        "roles": [
            {"rolename": name, "acls": [acl.as_json() for acl in sorted(access.roles[name])]}
            for name in sorted(access.roles)
        ],
    }


def _acls(items: Any) -> frozenset[Acl]:
    return frozenset(
        Acl(str(a["acltype"]), str(a["topic"]), bool(a.get("allow", False)), int(a.get("priority", 0)))
        for a in items or []
    )


def _role_refs(items: Any) -> frozenset[RoleRef]:
    return frozenset((str(r["rolename"]), int(r.get("priority", -1))) for r in items or [])


def from_json(data: Mapping[str, Any]) -> AccessList:
    """Parse the plugin's configuration file (or ``to_json`` output)."""
    try:
        default = {str(k): bool(v) for k, v in dict(data.get("defaultACLAccess") or {}).items()}
        return AccessList(
            {str(r["rolename"]): _acls(r.get("acls")) for r in data.get("roles") or []},
            {str(c["username"]): _role_refs(c.get("roles")) for c in data.get("clients") or []},
            {**{k: False for k in DEFAULT_ACCESS}, **default},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BrokerAccessError(
            f"the dynamic-security configuration is not in the plugin's format: {exc}"
        ) from exc


@dataclass
class Changes:
    """What ``plan`` changes, by kind (for reports and logs)."""

    created_clients: list[str] = field(default_factory=list)
    deleted_clients: list[str] = field(default_factory=list)
    changed_clients: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)
    deleted_roles: list[str] = field(default_factory=list)
    changed_roles: list[str] = field(default_factory=list)
    default_access: bool = False

    def __bool__(self) -> bool:
        return any(
            (
                self.created_clients,
                self.deleted_clients,
                self.changed_clients,
                self.created_roles,
                self.deleted_roles,
                self.changed_roles,
                self.default_access,
            )
        )

    def summary(self) -> str:
        parts = [
            f"{len(v)} {k.replace('_', ' ')}" for k, v in vars(self).items() if isinstance(v, list) and v
        ]
        if self.default_access:
            parts.append("default access set")
        return ", ".join(parts) or "already up to date"


def plan(
    current: AccessList, desired: AccessList, *, delete: bool = True
) -> tuple[list[dict[str, Any]], Changes]:
    """The ``$CONTROL`` commands that turn ``current`` into ``desired``, in an order the plugin
    accepts (roles before the clients that hold them; clients deleted before their roles).

    ``delete=False`` keeps clients and roles that ``desired`` does not mention. Note what the
    plugin does: deleting a client or changing its roles disconnects it; changing a role's ACLs
    disconnects every client holding it.
    """
    commands: list[dict[str, Any]] = []
    changes = Changes()
    if dict(current.default_access) != dict(desired.default_access):
        acls = [{"acltype": k, "allow": v} for k, v in sorted(desired.default_access.items())]
        commands.append({"command": "setDefaultACLAccess", "acls": acls})
        changes.default_access = True
    for name in sorted(desired.roles):
        want = desired.roles[name]
        if name not in current.roles:
            commands.append(
                {"command": "createRole", "rolename": name, "acls": [a.as_json() for a in sorted(want)]}
            )
            changes.created_roles.append(name)
            continue
        have = current.roles[name]
        if have == want:
            continue
        changes.changed_roles.append(name)
        for acl in sorted(have - want):
            commands.append(
                {"command": "removeRoleACL", "rolename": name, "acltype": acl.acltype, "topic": acl.topic}
            )
        for acl in sorted(want - have):
            commands.append({"command": "addRoleACL", "rolename": name, **acl.as_json()})
    for name in sorted(desired.clients):
        want_refs = desired.clients[name]
        if name not in current.clients:
            roles = [{"rolename": r, "priority": p} for r, p in sorted(want_refs)]
            commands.append({"command": "createClient", "username": name, "roles": roles})
            changes.created_clients.append(name)
            continue
        have_refs = current.clients[name]
        if have_refs == want_refs:
            continue
        changes.changed_clients.append(name)
        for role, _ in sorted(have_refs - want_refs):
            commands.append({"command": "removeClientRole", "username": name, "rolename": role})
        for role, priority in sorted(want_refs - have_refs):
            commands.append(
                {"command": "addClientRole", "username": name, "rolename": role, "priority": priority}
            )
    if delete:
        for name in sorted(set(current.clients) - set(desired.clients)):
            commands.append({"command": "deleteClient", "username": name})
            changes.deleted_clients.append(name)
        for name in sorted(set(current.roles) - set(desired.roles)):
            commands.append({"command": "deleteRole", "rolename": name})
            changes.deleted_roles.append(name)
    return commands, changes


# ---- the $CONTROL client (I/O shell) ------------------------------------------------------


def _all_in(ids: Sequence[str], answers: Mapping[str, Any]) -> Callable[[], bool]:
    return lambda: all(i in answers for i in ids)


@dataclass(frozen=True)
class BrokerEndpoint:
    """The broker's fleet listener and the admin identity used there."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path


class DynsecAdmin:
    """A short-lived MQTT connection that sends ``$CONTROL/dynamic-security/v1`` commands.

    Use as a context manager; ``run`` sends commands and returns the plugin's answers (raising
    BrokerAccessError for any refused command); ``read`` returns the broker's access list;
    ``converge`` applies ``plan``.
    """

    def __init__(self, endpoint: BrokerEndpoint, *, timeout: float = 15.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"broker-admin-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self._cond = threading.Condition()
        self._answers: dict[str, dict[str, Any]] = {}
        self._connack: ReasonCode | None = None
        self._suback: list[ReasonCode] | None = None
        self._closed = False

    # paho callbacks (network thread)
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._suback = list(rcs)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for answer in responses if isinstance(responses, list) else []:
                if isinstance(answer, dict) and isinstance(answer.get("correlationData"), str):
                    self._answers[answer["correlationData"]] = answer
            self._cond.notify_all()

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: ready() or self._closed, self.timeout) or not ready():
                raise BrokerAccessError(
                    f"the broker at {self.endpoint.host}:{self.endpoint.port} did not answer ({what}); "
                    "check that it runs with the configuration of `cityedge fleet broker-config`"
                )

    def __enter__(self) -> DynsecAdmin:
        ep = self.endpoint
        client = self._client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            client.tls_set(ca_certs=str(ep.ca), certfile=str(ep.cert), keyfile=str(ep.key))
            client.connect(ep.host, ep.port, keepalive=30)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BrokerAccessError(
                f"cannot reach the broker's fleet listener at {ep.host}:{ep.port} with the identity "
                f"{ep.cert}: {exc}"
            ) from exc
        client.loop_start()
        try:
            self._wait("connection", lambda: self._connack is not None)
            assert self._connack is not None
            if self._connack.is_failure:
                raise BrokerAccessError(f"the broker refused the admin connection: {self._connack}")
            client.subscribe(RESPONSE_TOPIC, qos=1)
            self._wait("subscription", lambda: self._suback is not None)
            assert self._suback is not None
            if not self._suback or self._suback[0].is_failure:
                raise BrokerAccessError(
                    f"the identity {ep.cert} may not manage the broker's access list "
                    f"({self._suback[0] if self._suback else 'no answer'}); name it as a broker admin "
                    "(cityedge fleet broker-config --broker-admin NAME) and run `fleet broker-sync` again"
                )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def run(
        self, commands: Sequence[Mapping[str, Any]], *, tolerate: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Send ``commands`` (in batches) and return the answers in order; BrokerAccessError names
        the first command the plugin refused, unless its error text is in ``tolerate``."""
        allowed = set(tolerate)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(commands), BATCH):
            batch = [dict(c, correlationData=secrets.token_hex(8)) for c in commands[start : start + BATCH]]
            ids = [c["correlationData"] for c in batch]
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerAccessError(
                    f"sending commands to the broker failed: {mqtt.error_string(info.rc)}"
                )
            self._wait("access list command", _all_in(ids, self._answers))
            with self._cond:
                got = [self._answers.pop(i) for i in ids]
            for command, answer in zip(batch, got, strict=True):
                error = answer.get("error")
                if error and error not in allowed:
                    target = command.get("username") or command.get("rolename") or ""
                    raise BrokerAccessError(
                        f"the broker refused {command['command']} {target}: {error}".rstrip()
                    )
            answers += got
        return answers

    def read(self) -> AccessList:
        """The broker's whole access list (every role and client)."""
        roles, clients, default = self.run(
            [
                {"command": "listRoles", "verbose": True, "count": -1},
                {"command": "listClients", "verbose": True, "count": -1},
                {"command": "getDefaultACLAccess"},
            ]
        )
        return self._parse(roles, clients, default)

    def read_only(self, usernames: Iterable[str], role_names: Iterable[str]) -> AccessList:
        """The part of the broker's access list about these clients and roles (absent ones are
        left out)."""
        names, roles = sorted(set(usernames)), sorted(set(role_names))
        gone = ("Client not found", "Role not found")
        answers = self.run(
            [{"command": "getClient", "username": n} for n in names]
            + [{"command": "getRole", "rolename": r} for r in roles]
            + [{"command": "getDefaultACLAccess"}],
            tolerate=gone,
        )
        clients = [a["data"]["client"] for a in answers[: len(names)] if "data" in a]
        found_roles = [a["data"]["role"] for a in answers[len(names) : -1] if "data" in a]
        return self._parse({"data": {"roles": found_roles}}, {"data": {"clients": clients}}, answers[-1])

    @staticmethod
    def _parse(
        roles: Mapping[str, Any], clients: Mapping[str, Any], default: Mapping[str, Any]
    ) -> AccessList:
        try:
            acls = {str(a["acltype"]): bool(a["allow"]) for a in default["data"]["acls"]}
            return from_json(
                {
                    "roles": roles["data"]["roles"],
                    "clients": clients["data"]["clients"],
                    "defaultACLAccess": acls,
                }
            )
        except (KeyError, TypeError) as exc:
            raise BrokerAccessError(
                f"unexpected answer from the broker's dynamic-security plugin: {exc}"
            ) from exc

    def converge(self, desired: AccessList, *, only: Iterable[str] | None = None) -> Changes:
        """Bring the broker to ``desired``: everything (``only=None``: clients and roles not in
        ``desired`` are deleted), or just the clients named in ``only`` (created, changed, or
        deleted when ``desired`` no longer lists them) and their roles."""
        if only is None:
            commands, changes = plan(self.read(), desired)
        else:
            names = set(only)
            part = desired.only(names)
            role_names = {device_role(n) for n in names} | set(part.roles)
            current = self.read_only(names, role_names)
            wanted = AccessList(part.roles, part.clients, desired.default_access)
            commands, changes = plan(current, wanted, delete=False)
            for name in sorted(names - set(part.clients)):
                if name in current.clients:
                    commands.append({"command": "deleteClient", "username": name})
                    changes.deleted_clients.append(name)
                role = device_role(name)
                if role in current.roles:
                    commands.append({"command": "deleteRole", "rolename": role})
                    changes.deleted_roles.append(role)
        if commands:
            self.run(commands)
        return changes
