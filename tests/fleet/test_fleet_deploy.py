"""The EMQX deployment description (deploy/emqx) holds together without a container runtime: the
compose file parses, names every service, and gives each fleet worker the settings `fleet serve`
reads from its environment; the EMQX configuration and ACL keep the city contract (mTLS, devices
in their own subtree, fleet workers alone in their shared group), checked with a small model of
EMQX's first-match ACL evaluation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from fleet.cli import register
from fleet.emqxconf import emqx_acl_text
from protocol.topics import Topics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "emqx"
T = Topics()
FLEET_ID = "fleet-ingest"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def serve_envvars() -> set[str]:
    app = typer.Typer()
    register(app)
    group: Any = typer.main.get_command(app)
    serve = group.commands["fleet"].commands["serve"]
    return {p.envvar for p in serve.params if isinstance(p.envvar, str)}


def workers(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in service["environment"].items()}
        for name, service in compose["services"].items()
        if name.startswith("fleet-")
    }


def test_the_compose_file_has_a_cluster_a_database_and_several_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    emqx = sorted(n for n in services if n.startswith("emqx"))
    assert emqx == ["emqx1", "emqx2", "emqx3"]
    assert "postgres" in services and "devices-lb" in services
    assert len(workers(compose)) >= 2
    conf = (DEPLOY / "emqx.conf").read_text()
    seeds = set(re.findall(r'"(emqx@emqx\d\.cityedge\.internal)"', conf.split("static.seeds", 1)[1]))
    nodes = {services[n]["environment"]["EMQX_NODE__NAME"] for n in emqx}
    assert nodes == seeds
    for name in emqx:
        service = services[name]
        assert service["environment"]["EMQX_NODE__NAME"] == f"emqx@{service['hostname']}"
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {"/opt/emqx/etc/emqx.conf", "/opt/emqx/etc/acl.conf", "/opt/emqx/etc/certs"} <= mounts
    assert all(port.startswith("127.0.0.1:") for port in services["emqx1"]["ports"])  # dashboard
    lb = (DEPLOY / "haproxy.cfg").read_text()
    assert all(f"{services[n]['hostname']}:8883" in lb for n in emqx)


def test_every_worker_is_configured_as_fleet_serve_reads_it(compose: dict[str, Any]) -> None:
    known = serve_envvars()
    hosts = {compose["services"][n]["hostname"] for n in compose["services"] if n.startswith("emqx")}
    ids = []
    for name, env in workers(compose).items():
        fleet_vars = {k for k in env if k.startswith("CITYEDGE_FLEET_")}
        assert fleet_vars <= known, f"{name}: not read by fleet serve: {fleet_vars - known}"
        assert env["CITYEDGE_FLEET_DB"].startswith("postgresql+psycopg://")
        assert env["CITYEDGE_FLEET_SHARE"] == "true" and env["CITYEDGE_FLEET_GROUP"] == "fleet"
        broker = re.fullmatch(r"mqtts://([^:]+):8884", env["CITYEDGE_FLEET_BROKER"])
        assert broker is not None and broker.group(1) in hosts, "workers use the internal fleet listener"
        assert {"CITYEDGE_FLEET_CA", "CITYEDGE_FLEET_CERT", "CITYEDGE_FLEET_KEY"} <= set(env)
        assert {"CITYEDGE_FLEET_TLS_CERT", "CITYEDGE_FLEET_TLS_KEY"} <= set(env)  # HTTP off loopback
        ids.append(env["CITYEDGE_FLEET_WORKER_ID"])
    assert len(set(ids)) == len(ids), "each worker needs its own stable id"


def test_the_broker_configuration_keeps_the_contract() -> None:
    conf = (DEPLOY / "emqx.conf").read_text()
    listeners = re.findall(r"listeners\.ssl\.(\w+) \{(.*?)\n\}", conf, re.S)
    assert {name for name, _ in listeners} == {"default", "fleet"}
    for _name, body in listeners:
        assert "verify = verify_peer" in body and "fail_if_no_peer_cert = true" in body
    bodies = dict(listeners)
    assert "fleet-ca.pem" in bodies["fleet"] and "zone = fleet" in bodies["fleet"]
    assert "/ca.pem" in bodies["default"] and "zone = devices" in bodies["default"]
    devices_zone = conf.split("devices.mqtt {", 1)[1].split("}", 1)[0]
    assert "peer_cert_as_username = cn" in devices_zone and "peer_cert_as_clientid = cn" in devices_zone
    assert "no_match = deny" in conf and 'path = "/opt/emqx/etc/acl.conf"' in conf
    for plain in ("tcp", "ws", "wss"):
        assert f"listeners.{plain}.default.enable = false" in conf
    assert (DEPLOY / "acl.conf").read_text() == emqx_acl_text(services=[FLEET_ID])


# -- a model of EMQX's file authorization: first matching rule wins, no match denies ----------------

Rule = tuple[str, str | None, str, list[str]]


def parse_rules(text: str) -> list[Rule]:
    rules: list[Rule] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        if line == "{deny, all}.":
            rules.append(("deny", None, "all", ["#"]))
            continue
        m = re.fullmatch(r"\{(allow|deny), (all|\{username, \"([^\"]+)\"\}), (\w+), \[(.*)\]\}\.", line)
        assert m is not None, line
        topics = re.findall(r'\{eq, "[^"]*"\}|"[^"]*"', m.group(5))
        rules.append((m.group(1), m.group(3), m.group(4), topics))
    return rules


def _match(name: str, pattern: str) -> bool:
    """``emqx_topic:match``: a word matches itself; ``+`` one word, ``#`` the rest; no wildcard
    at the first level matches a ``$`` topic."""
    words, pats = name.split("/"), pattern.split("/")
    if words[0].startswith("$") and pats[0] in ("+", "#"):
        return False
    for i, pat in enumerate(pats):
        if pat == "#":
            return True
        if i >= len(words) or (pat != "+" and pat != words[i]):
            return False
    return len(words) == len(pats)


def _rule_covers(topic: str, rule_topic: str, username: str) -> bool:
    if rule_topic.startswith("{eq"):
        return topic == rule_topic.split('"')[1]
    return _match(topic, rule_topic.strip('"').replace("${username}", username))


def allowed(rules: list[Rule], username: str, action: str, topic: str) -> bool:
    """Whether EMQX would allow it. A shared subscription counts as allowed only if both its full
    filter and its real topic are (whichever of the two a version of EMQX checks)."""
    candidates = [topic]
    if action == "subscribe" and topic.startswith("$share/"):
        candidates.append(topic.split("/", 2)[2])
    for candidate in candidates:
        verdict = "deny"
        for permission, who, rule_action, topics in rules:
            if who not in (None, username) or rule_action not in ("all", action):
                continue
            if any(_rule_covers(candidate, t, username) for t in topics):
                verdict = permission
                break
        if verdict != "allow":
            return False
    return True


ME, OTHER, REVOKED = "cam-hn-a-0001", "cam-hn-b-0002", "cam-hn-r-0003"


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return parse_rules(emqx_acl_text(services=[FLEET_ID, "fleet-admin"], revoked=[REVOKED]))


def test_a_device_publishes_and_subscribes_only_in_its_own_subtree(rules: list[Rule]) -> None:
    for topic in (T.status(ME), T.telemetry(ME), T.event(ME, "traffic.violation"), T.commands_res(ME)):
        assert allowed(rules, ME, "publish", topic), topic
    for topic in (T.telemetry(OTHER), T.commands_req(ME), T.shadow_desired(OTHER), "#"):
        assert not allowed(rules, ME, "publish", topic), topic
    for topic in (T.commands_req(ME), T.shadow_desired(ME), T.rpc_res(ME)):
        assert allowed(rules, ME, "subscribe", topic), topic
    for topic in (
        T.commands_req(OTHER),
        "city/v1/devices/+/commands/req",
        f"city/v1/devices/{ME}/#",
        "#",
        "+/#",
        "$SYS/#",
        T.telemetry(ME),
    ):
        assert not allowed(rules, ME, "subscribe", topic), topic


def test_no_device_joins_the_workers_shared_group(rules: list[Rule]) -> None:
    group = [T.shared("fleet", f) for f in T.fleet_filters()]
    for topic in [*group, "$share/fleet/#", f"$share/fleet/city/v1/devices/{ME}/events/#", "$queue/#"]:
        assert not allowed(rules, ME, "subscribe", topic), topic
    for topic in group:
        assert allowed(rules, FLEET_ID, "subscribe", topic), topic
    for topic in (T.commands_req(ME), T.shadow_desired(OTHER), T.rpc_res(ME)):
        assert allowed(rules, FLEET_ID, "publish", topic), topic
    assert not allowed(rules, FLEET_ID, "subscribe", "#")
    assert not allowed(rules, FLEET_ID, "publish", T.telemetry(ME))


def test_a_revoked_identity_gets_nothing(rules: list[Rule]) -> None:
    assert not allowed(rules, REVOKED, "publish", T.telemetry(REVOKED))
    assert not allowed(rules, REVOKED, "subscribe", T.commands_req(REVOKED))


def test_emqx_config_writes_the_acl_and_certificates_from_the_pki(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleet.pki import CityPKI
    from hw.keystore import FileKeyStore

    pki = CityPKI.init(tmp_path / "pki")
    pki.issue_service_identity(FLEET_ID)
    store = FileKeyStore.create(tmp_path / "dev" / "key.pem", algorithm="p256")
    pki.sign_device_csr(store.csr(REVOKED), REVOKED)
    pki.revoke(REVOKED, "stolen")
    app = typer.Typer()
    register(app)
    out = tmp_path / "emqx"
    args = ["fleet", "emqx-config", "--pki", str(tmp_path / "pki"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--hostname", "emqx1.cityedge.internal"])
    assert result.exit_code == 0, result.output
    assert "1 revoked" in result.output
    text = (out / "acl.conf").read_text()
    assert text == emqx_acl_text(services=[FLEET_ID], revoked=[REVOKED])
    assert not allowed(parse_rules(text), REVOKED, "publish", T.telemetry(REVOKED))
    assert {p.name for p in (out / "certs").iterdir()} == {
        "server.crt",
        "server.key",
        "ca.pem",
        "fleet-ca.pem",
    }
    nowhere = ["fleet", "emqx-config", "--pki", str(tmp_path / "nope"), "--out", str(out), "--hostname", "x"]
    missing = CliRunner().invoke(app, nowhere)
    assert missing.exit_code == 2 and "error:" in missing.output
