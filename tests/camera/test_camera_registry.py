"""Model registry: pinned hashes, refusal of a wrong file, the models CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityedge.cli import build_app
from models.registry import (
    REGISTRY_FILE,
    ModelFileMissingError,
    ModelHashMismatchError,
    Registry,
    RegistryFormatError,
    UnknownModelError,
    file_sha256,
)

YOLOX_SHA = "e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd"


def test_registry_pins_the_detector_and_the_ppocr_models(registry: Registry) -> None:
    assert {"yolox_nano", "ppocr_det", "ppocr_rec", "ppocr_cls"} <= set(registry.names())
    spec = registry.spec("yolox_nano")
    assert spec.sha256 == YOLOX_SHA
    assert (spec.input.width, spec.input.height, spec.input.colour, spec.input.pad_value) == (
        416,
        416,
        "BGR",
        114,
    )
    assert spec.labels[:4] == ["person", "bicycle", "car", "motorcycle"] and len(spec.labels) == 80
    assert spec.licence == "Apache-2.0" and spec.source
    for name in ("ppocr_det", "ppocr_rec", "ppocr_cls"):
        report = registry.verify(name)
        assert report["ok"], report
        assert "site-packages/rapidocr" in report["path"]


def test_a_model_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    (tmp_path / "yolox_nano.onnx").write_bytes(b"definitely not the model")
    reg = Registry.load(models_dir=tmp_path)
    with pytest.raises(ModelHashMismatchError) as info:
        reg.path_for("yolox_nano")
    message = str(info.value)
    assert YOLOX_SHA in message and file_sha256(tmp_path / "yolox_nano.onnx") in message
    assert "refusing to load" in message
    assert reg.verify("yolox_nano")["ok"] is False


def test_missing_file_and_unknown_model_are_explained(tmp_path: Path) -> None:
    reg = Registry.load(models_dir=tmp_path)
    with pytest.raises(ModelFileMissingError, match="CITYEDGE_MODELS_DIR"):
        reg.path_for("yolox_nano")
    with pytest.raises(UnknownModelError, match=r"no model named 'yolo9'.*known: .*yolox_nano"):
        reg.spec("yolo9")


def test_models_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYEDGE_MODELS_DIR", str(tmp_path))
    assert Registry.load().location("yolox_nano") == tmp_path / "yolox_nano.onnx"


def test_bad_registry_file_names_model_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text(
        '[models.x]\nfile = "x.onnx"\nsha256 = "abc"\ntask = "detection"\nlicence = "MIT"\nsource = "s"\n'
        "[models.x.input]\nwidth = 10\nheight = 10\n"
    )
    with pytest.raises(RegistryFormatError, match=r"model 'x', field sha256: .*64 lower-case hex"):
        Registry.load(bad)


def test_models_cli_list_verify_add(tmp_path: Path, registry: Registry) -> None:
    runner = CliRunner()
    app = build_app()
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [m["name"] for m in json.loads(listed.output)["models"]]
    assert "yolox_nano" in names

    verified = runner.invoke(app, ["models", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.output)["ok"] is True

    (tmp_path / "yolox_nano.onnx").write_bytes(b"tampered")
    failed = runner.invoke(app, ["models", "verify", "yolox_nano", "--models-dir", str(tmp_path)])
    assert failed.exit_code == 1 and "FAIL yolox_nano" in failed.output and "sha256" in failed.output

    local = tmp_path / "registry.toml"
    local.write_text(REGISTRY_FILE.read_text())
    model = tmp_path / "models" / "tiny.onnx"
    model.parent.mkdir()
    model.write_bytes(b"\x08\x01tiny model bytes")
    added = runner.invoke(
        app,
        [
            "models",
            "add",
            "tiny",
            "--file",
            str(model),
            "--licence",
            "MIT",
            "--source",
            "test",
            "--width",
            "320",
            "--height",
            "320",
            "--labels-from",
            "yolox_nano",
            "--registry",
            str(local),
            "--models-dir",
            str(model.parent),
            "--json",
        ],
    )
    assert added.exit_code == 0, added.output
    reg = Registry.load(local, models_dir=model.parent)
    assert reg.spec("tiny").sha256 == file_sha256(model) and reg.spec("tiny").input.width == 320
    assert reg.path_for("tiny") == model and len(reg.spec("tiny").labels) == 80
    assert reg.spec("yolox_nano").sha256 == YOLOX_SHA, "existing entries are kept"

    outside = runner.invoke(
        app,
        [
            "models",
            "add",
            "x",
            "--file",
            str(local),
            "--licence",
            "MIT",
            "--source",
            "s",
            "--registry",
            str(local),
            "--models-dir",
            str(model.parent),
        ],
    )
    assert outside.exit_code == 2 and "not inside the models folder" in outside.output
