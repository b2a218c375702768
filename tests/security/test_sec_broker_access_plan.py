"""The broker access list (``fleet.dynsec``) as data: its shape, its file, and the $CONTROL plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.brokerconf import BrokerSecurity, pki_access_list
from fleet.dynsec import (
    ADMIN_ROLE,
    SERVICE_ROLE,
    AccessList,
    Acl,
    BrokerAccessError,
    access_list,
    device_role,
    from_json,
    plan,
    to_json,
)
from fleet.pki import CityPKI
from hw.keystore import FileKeyStore


def test_a_device_gets_exactly_its_own_topics() -> None:
    access = access_list(
        devices=["kiosk-hn-0001"], services=["fleet-ingest", "fleet-admin"], admins=["fleet-admin"]
    )
    root = "city/v1/devices/kiosk-hn-0001"
    assert access.clients["kiosk-hn-0001"] == frozenset({("device:kiosk-hn-0001", 0)})
    assert sorted(access.roles["device:kiosk-hn-0001"]) == sorted(
        [
            *(
                Acl("publishClientSend", f"{root}/{f}")
                for f in ("status", "telemetry", "events/#", "shadow/reported", "commands/res", "rpc/req")
            ),
            *(
                Acl("publishClientReceive", f"{root}/{f}")
                for f in ("shadow/desired", "commands/req", "rpc/res")
            ),
            *(Acl("subscribeLiteral", f"{root}/{f}") for f in ("shadow/desired", "commands/req", "rpc/res")),
        ]
    )
    service = access.roles[SERVICE_ROLE]
    assert Acl("subscribePattern", "$share/+/city/v1/devices/+/events/#") in service
    assert Acl("publishClientSend", "city/v1/devices/+/commands/req") in service
    assert not [a for a in service if a.topic in ("#", "$SYS/#") or a.topic.startswith("$CONTROL")]
    assert access.clients["fleet-admin"] == frozenset({(ADMIN_ROLE, 0)})  # admin rights only
    assert {a.topic for a in access.roles[ADMIN_ROLE]} == {
        "$CONTROL/dynamic-security/v1",
        "$CONTROL/dynamic-security/v1/response",
    }
    assert dict(access.default_access) == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_the_file_lists_valid_identities_only_and_is_reproducible(tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki")
    pki.issue_service_identity("fleet-ingest")
    pki.issue_service_identity("fleet-old")
    for device in ("kiosk-hn-0002", "kiosk-hn-0001", "cam-hn-0003"):
        store = FileKeyStore.create(tmp_path / f"{device}.pem", algorithm="p256")
        pki.sign_device_csr(store.csr(device), device)
    pki.revoke("cam-hn-0003", "stolen")
    pki.revoke("fleet-old", "superseded")
    security = BrokerSecurity()
    first, second = to_json(pki_access_list(pki, security)), to_json(pki_access_list(pki, security))
    assert first == second
    assert [c["username"] for c in first["clients"]] == ["fleet-ingest", "kiosk-hn-0001", "kiosk-hn-0002"]
    assert [r["rolename"] for r in first["roles"]] == [
        "device:kiosk-hn-0001",
        "device:kiosk-hn-0002",
        SERVICE_ROLE,
    ]
    assert from_json(first) == pki_access_list(pki, security)


def test_a_damaged_file_is_reported() -> None:
    with pytest.raises(BrokerAccessError, match="not in the plugin's format"):
        from_json({"roles": [{"acls": []}]})


# ---- plan: applied by a model of the plugin, it always reaches the desired list ----------------


def apply(state: AccessList, commands: list[dict[str, Any]]) -> AccessList:
    """What the plugin does with these commands (refusing what it would refuse)."""
    roles = {k: set(v) for k, v in state.roles.items()}
    clients = {k: set(v) for k, v in state.clients.items()}
    default = dict(state.default_access)
    for c in commands:
        kind = c["command"]
        if kind == "setDefaultACLAccess":
            default.update({a["acltype"]: a["allow"] for a in c["acls"]})
        elif kind == "createRole":
            assert c["rolename"] not in roles, "Role already exists"
            roles[c["rolename"]] = {
                Acl(a["acltype"], a["topic"], a["allow"], a["priority"]) for a in c["acls"]
            }
        elif kind == "deleteRole":
            roles.pop(c["rolename"])
            for refs in clients.values():
                refs -= {r for r in refs if r[0] == c["rolename"]}
        elif kind == "addRoleACL":
            roles[c["rolename"]].add(Acl(c["acltype"], c["topic"], c["allow"], c["priority"]))
        elif kind == "removeRoleACL":
            roles[c["rolename"]] -= {
                a for a in roles[c["rolename"]] if (a.acltype, a.topic) == (c["acltype"], c["topic"])
            }
        elif kind == "createClient":
            assert c["username"] not in clients, "Client already exists"
            assert all(r["rolename"] in roles for r in c["roles"]), "Role not found"
            clients[c["username"]] = {(r["rolename"], r["priority"]) for r in c["roles"]}
        elif kind == "deleteClient":
            clients.pop(c["username"])
        elif kind == "addClientRole":
            assert c["rolename"] in roles, "Role not found"
            clients[c["username"]].add((c["rolename"], c["priority"]))
        elif kind == "removeClientRole":
            clients[c["username"]] -= {r for r in clients[c["username"]] if r[0] == c["rolename"]}
        else:
            raise AssertionError(f"unexpected command {kind}")
    return AccessList(
        {k: frozenset(v) for k, v in roles.items()}, {k: frozenset(v) for k, v in clients.items()}, default
    )


ids = st.sets(st.from_regex(r"\A[a-z]{2,4}-[0-9]{2}\Z"), max_size=6)
services = st.sets(st.sampled_from(["fleet-ingest", "fleet-admin", "fleet-audit"]), max_size=3)
lists = st.builds(
    lambda d, s, admins, prefix: access_list(devices=d, services=s, admins=admins, prefix=prefix),
    ids,
    services,
    st.sets(st.sampled_from(["fleet-admin", "fleet-audit"]), max_size=2),
    st.sampled_from(["city/v1", "town/v2"]),
)


@settings(max_examples=200, deadline=None)
@given(lists, lists)
def test_plan_reaches_the_desired_list_from_any_state(current: AccessList, desired: AccessList) -> None:
    commands, changes = plan(current, desired)
    assert apply(current, commands) == desired
    assert bool(changes) == bool(commands)
    assert plan(desired, desired)[0] == []
    assert plan(from_json(to_json(desired)), desired)[0] == []


@settings(max_examples=100, deadline=None)
@given(lists, lists, ids)
def test_a_partial_plan_touches_only_the_named_clients(
    current: AccessList, desired: AccessList, names: set[str]
) -> None:
    part = desired.only(names)
    commands, _ = plan(
        current.only(names), AccessList(part.roles, part.clients, desired.default_access), delete=False
    )
    touched = {c.get("username") for c in commands} - {None}
    assert touched <= names
    assert not [c for c in commands if c["command"] in ("deleteClient", "deleteRole")]
    roles = {c["rolename"] for c in commands if "rolename" in c and c["command"] != "addClientRole"}
    assert roles <= {device_role(n) for n in names} | {SERVICE_ROLE, ADMIN_ROLE}
