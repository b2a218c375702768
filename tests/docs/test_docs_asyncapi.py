"""docs/protocol/asyncapi.yaml describes exactly the contract the code implements.

Channels are the topic families of ``protocol.topics``, operations follow the device's side of
the ACL, payload schemas are valid JSON Schemas whose required fields are the pydantic models'
required fields, and every example passes both the schema and the model.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator
from pydantic import BaseModel

import protocol.models as models
from protocol.errors import PayloadError
from protocol.models import decode
from protocol.topics import DEVICE_PUBLISHES, DEVICE_SUBSCRIBES, Topics

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "asyncapi.yaml"
SAMPLE = {"deviceId": "kiosk-hn-btl-0001", "kind": "traffic.count"}

# The table of PROTOCOL.md: family -> (allowed QoS, retained).
CONTRACT: dict[str, tuple[set[int], bool]] = {
    "status": ({1}, True),
    "telemetry": ({0, 1}, False),
    "events": ({1}, False),
    "shadow/reported": ({1}, True),
    "shadow/desired": ({1}, True),
    "commands/req": ({1}, False),
    "commands/res": ({1}, False),
    "rpc/req": ({1}, False),
    "rpc/res": ({1}, False),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    data = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points to (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return resolve(doc, _pointer(doc, node["$ref"]))
        return {k: resolve(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(doc, v) for v in node]
    return node


def _family(address: str) -> str:
    concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], address)
    return Topics().parse(concrete).family


def _messages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = doc["components"]["messages"]
    return out


def _model(message: dict[str, Any]) -> type[BaseModel]:
    model = getattr(models, message["name"], None)
    assert isinstance(model, type) and issubclass(model, models.WireModel), message["name"]
    return model


def _required(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.is_required()}


def test_document_parses_as_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"] == "1"
    assert doc["defaultContentType"] == "application/json"
    for key in ("channels", "operations", "components"):
        assert doc[key], key


def test_every_local_reference_resolves(doc: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        _pointer(doc, ref)


def test_channels_are_exactly_the_topic_families(doc: dict[str, Any]) -> None:
    families = [_family(ch["address"]) for ch in doc["channels"].values()]
    assert sorted(families) == sorted(set(families)), "one channel per family"
    assert set(families) == set(DEVICE_PUBLISHES) | set(DEVICE_SUBSCRIBES)
    for ch in doc["channels"].values():
        assert ch["address"].startswith("city/v1/devices/{deviceId}/")
        placeholders = set(re.findall(r"\{(\w+)\}", ch["address"]))
        assert placeholders == set(ch["parameters"]), ch["address"]
        assert len(ch["messages"]) == 1


def test_channel_addresses_build_the_same_topics_as_the_code(doc: dict[str, Any]) -> None:
    t, device = Topics(), SAMPLE["deviceId"]
    built = {
        "status": t.status(device),
        "telemetry": t.telemetry(device),
        "events": t.event(device, SAMPLE["kind"]),
        "shadow/reported": t.shadow_reported(device),
        "shadow/desired": t.shadow_desired(device),
        "commands/req": t.commands_req(device),
        "commands/res": t.commands_res(device),
        "rpc/req": t.rpc_req(device),
        "rpc/res": t.rpc_res(device),
    }
    for ch in doc["channels"].values():
        concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], ch["address"])
        assert built[_family(ch["address"])] == concrete


def test_operations_follow_the_device_side_of_the_acl(doc: dict[str, Any]) -> None:
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for op in doc["operations"].values():
        by_channel.setdefault(op["channel"]["$ref"], []).append(op)
    assert set(by_channel) == {f"#/channels/{name}" for name in doc["channels"]}
    for ref, ops in by_channel.items():
        assert len(ops) == 1, ref
        op = ops[0]
        channel = _pointer(doc, ref)
        family = _family(channel["address"])
        assert op["action"] == ("send" if family in DEVICE_PUBLISHES else "receive"), family
        qos, retained = CONTRACT[family]
        mqtt = op["bindings"]["mqtt"]
        assert mqtt["qos"] in qos and mqtt["retain"] is retained, family
        for msg in op["messages"]:
            assert msg["$ref"].startswith(f"{ref}/messages/")
    acl = doc["x-acl"]
    assert acl["publish"] == list(DEVICE_PUBLISHES) and acl["subscribe"] == list(DEVICE_SUBSCRIBES)


def test_request_reply_pairs(doc: dict[str, Any]) -> None:
    ops = doc["operations"]
    assert ops["receiveCommand"]["reply"]["channel"]["$ref"] == "#/channels/commandsRes"
    assert ops["sendRpcRequest"]["reply"]["channel"]["$ref"] == "#/channels/rpcRes"


def test_messages_are_exactly_the_wire_models(doc: dict[str, Any]) -> None:
    wire = {
        name
        for name, obj in vars(models).items()
        if isinstance(obj, type) and issubclass(obj, models.WireModel) and obj not in (models.WireModel,)
    }
    wire.discard("Signature")  # a part of messages, not a message
    names = {m["name"] for m in _messages(doc).values()}
    assert names == wire
    for key, message in _messages(doc).items():
        assert key == message["name"]
        assert message["payload"]["$ref"] == f"#/components/schemas/{key}"


@pytest.mark.parametrize("validator", [Draft202012Validator, Draft7Validator])
def test_every_schema_is_a_valid_json_schema(doc: dict[str, Any], validator: Any) -> None:
    for name, schema in doc["components"]["schemas"].items():
        try:
            validator.check_schema(resolve(doc, schema))
        except Exception as exc:
            raise AssertionError(f"schema {name}: {exc}") from exc


def test_schema_required_fields_equal_the_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for message in _messages(doc).values():
        model = _model(message)
        schema = schemas[message["name"]]
        assert set(schema["required"]) == _required(model), message["name"]
        assert set(model.model_fields) <= set(schema["properties"]), message["name"]
        assert schema.get("additionalProperties", True) is True  # readers accept newer writers
    signature = schemas["Signature"]
    assert set(signature["required"]) == _required(models.Signature)
    assert set(signature["properties"]) == set(models.Signature.model_fields)


def test_every_message_has_examples_that_pass_schema_and_model(doc: dict[str, Any]) -> None:
    for message in _messages(doc).values():
        model = _model(message)
        schema = resolve(doc, message["payload"])
        validator = Draft202012Validator(schema)
        assert message["examples"], f"{message['name']} has no example"
        for example in message["examples"]:
            payload = example["payload"]
            errors = [e.message for e in validator.iter_errors(payload)]
            assert not errors, f"{message['name']}/{example['name']}: {errors}"
            decode(model, json.dumps(payload).encode())


def test_dropping_a_required_field_fails_schema_and_model_alike(doc: dict[str, Any]) -> None:
    for message in _messages(doc).values():
        model = _model(message)
        validator = Draft202012Validator(resolve(doc, message["payload"]))
        example = message["examples"][0]["payload"]
        for field in _required(model):
            broken = copy.deepcopy(example)
            del broken[field]
            assert not validator.is_valid(broken), f"{message['name']} schema accepts a missing {field}"
            with pytest.raises(PayloadError):
                decode(model, json.dumps(broken).encode())


def test_signed_examples_carry_well_formed_signatures(doc: dict[str, Any]) -> None:
    signed = 0
    for message in _messages(doc).values():
        for example in message["examples"]:
            sig = example["payload"].get("sig")
            if sig is None:
                continue
            signed += 1
            assert sig["alg"] == "ed25519"
            assert len(base64.b64decode(sig["value"], validate=True)) == 64
    assert signed >= 3
    violations = [
        ex["payload"]
        for ex in _messages(doc)["EventEnvelope"]["examples"]
        if ex["payload"]["kind"] == "traffic.violation"
    ]
    assert violations and all("sig" in v for v in violations)


def test_event_examples_match_their_topic_kind(doc: dict[str, Any]) -> None:
    kinds = doc["components"]["parameters"]["kind"]["examples"]
    for example in _messages(doc)["EventEnvelope"]["examples"]:
        payload = example["payload"]
        assert payload["kind"] in kinds
        topic = Topics().event(payload["device"], payload["kind"])
        parsed = Topics().parse(topic)
        assert (parsed.device, parsed.kind) == (payload["device"], payload["kind"])


# PROTOCOL.md "Updates (OTA)": the progress events a device sends.
OTA_KINDS = [
    "ota.downloading",
    "ota.verifying",
    "ota.installing",
    "ota.restarting",
    "ota.healthy",
    "ota.committed",
    "ota.rolled_back",
    "ota.failed",
    "ota.waiting",
]


def _ota_validator(doc: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(resolve(doc, {"$ref": "#/components/schemas/OtaEvent"}))


def _ota_examples(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        ex["payload"]
        for ex in _messages(doc)["EventEnvelope"]["examples"]
        if ex["payload"]["kind"].startswith("ota.")
    ]


def test_ota_event_kinds_are_the_protocol_list(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["OtaKind"]["enum"] == OTA_KINDS
    kinds = doc["components"]["parameters"]["kind"]["examples"]
    assert set(OTA_KINDS) <= set(kinds)
    for kind in OTA_KINDS:
        assert f"`{kind}`" in doc["info"]["description"], kind
        assert f"`{kind}`" in schemas["OtaKind"]["description"], kind
    data = schemas["OtaEventData"]
    assert set(data["required"]) == {"from", "to"}
    assert {"from", "to", "reason", "code", "bytes_done", "bytes_total"} <= set(data["properties"])


def test_ota_examples_pass_the_ota_schema_and_a_broken_one_does_not(doc: dict[str, Any]) -> None:
    validator = _ota_validator(doc)
    examples = _ota_examples(doc)
    assert {"ota.downloading", "ota.committed", "ota.rolled_back", "ota.failed"} <= {
        e["kind"] for e in examples
    }
    for example in examples:
        assert not [e.message for e in validator.iter_errors(example)], example["kind"]
        decode(models.EventEnvelope, json.dumps(example).encode())
    rolled_back = next(e for e in examples if e["kind"] == "ota.rolled_back")
    for field in ("reason", "from", "to"):  # reason is required where one applies
        broken = copy.deepcopy(rolled_back)
        del broken["data"][field]
        assert not validator.is_valid(broken), f"ota.rolled_back without {field}"
    committed = next(e for e in examples if e["kind"] == "ota.committed")
    assert "reason" not in committed["data"] and validator.is_valid(committed)
    assert not validator.is_valid({**committed, "kind": "ota.unheard_of"})
    assert not validator.is_valid({**committed, "data": {**committed["data"], "to": "latest"}})


def test_desired_release_schema_matches_the_release_model(doc: dict[str, Any]) -> None:
    from protocol.release import VERSION_RE, DesiredRelease, parse_desired_release

    schemas = doc["components"]["schemas"]
    release = schemas["DesiredRelease"]
    assert set(release["required"]) == _required(DesiredRelease)
    assert set(release["properties"]) == set(DesiredRelease.model_fields)
    assert schemas["ReleaseVersion"]["pattern"] == VERSION_RE.pattern
    validator = Draft202012Validator(resolve(doc, _messages(doc)["ShadowDesired"]["payload"]))
    releases = [ex["payload"]["release"] for ex in _messages(doc)["ShadowDesired"]["examples"]]
    assert None in releases and any(r is not None for r in releases)
    for value in releases:
        parsed = parse_desired_release(value)
        assert (parsed is None) == (value is None)
    example = next(
        ex["payload"] for ex in _messages(doc)["ShadowDesired"]["examples"] if ex["payload"]["release"]
    )
    broken = copy.deepcopy(example)
    del broken["release"]["target"]
    assert not validator.is_valid(broken)
    with pytest.raises(PayloadError):
        parse_desired_release(broken["release"])


@functools.lru_cache(maxsize=1)
def _version_validator() -> Draft202012Validator:
    document = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return Draft202012Validator(resolve(document, {"$ref": "#/components/schemas/ReleaseVersion"}))


@given(
    st.one_of(
        st.text(max_size=30),
        st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,4}([-+.][a-z0-9]{1,4})?", fullmatch=True),
    )
)
def test_release_version_pattern_agrees_with_the_parser(text: str) -> None:
    from protocol.release import check_version

    try:
        check_version(text)
        parser_ok = True
    except ValueError:
        parser_ok = False
    assert _version_validator().is_valid(text) == parser_ok, text
