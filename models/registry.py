"""Model registry: every model file the devices load, pinned by sha256.

``registry.toml`` (next to this module) lists each model: its file (relative to a base directory),
sha256, input spec, labels, licence and source. A file is loaded only through ``Registry.path_for``,
which refuses a missing file or one whose hash differs, naming the expected and actual hash.

Base directories:

- ``models`` (default): the models directory — ``CITYEDGE_MODELS_DIR`` if set, else an explicit
  ``models_dir``, else ``../shared/models`` next to the repository;
- ``package:NAME``: inside an installed Python package (e.g. the PP-OCR files shipped in the
  ``rapidocr`` wheel), found without importing the package.

Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


def toml_loads(text: str) -> dict[str, Any]:
    """tomllib from Python 3.11, tomli before (imported by name so mypy checks both)."""
    module = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    return dict(module.loads(text))


REGISTRY_FILE = Path(__file__).with_name("registry.toml")
ENV_MODELS_DIR = "CITYEDGE_MODELS_DIR"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ModelError(Exception):
    """Base class for model registry problems."""


class UnknownModelError(ModelError):
    """No model of that name is registered."""


class ModelFileMissingError(ModelError):
    """The registered file is not where the registry says."""


class ModelHashMismatchError(ModelError):
    """The file's sha256 differs from the pinned one: wrong or tampered file."""

    def __init__(self, name: str, path: Path, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            f"model {name!r}: file {path} has sha256 {actual}, but the registry expects {expected}; "
            "refusing to load it (wrong or modified file)"
        )


class RegistryFormatError(ModelError):
    """registry.toml is not valid."""


def default_models_dir() -> Path:
    """``$CITYEDGE_MODELS_DIR`` if set, else ``../shared/models`` next to the repository."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "models"


class InputSpec(BaseModel):
    """How an image becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(gt=0, description="Input width in pixels (0 < w); dynamic models: typical width.")
    height: int = Field(gt=0, description="Input height in pixels.")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Tensor layout.")
    colour: Literal["BGR", "RGB", "GRAY"] = Field(default="BGR", description="Channel order expected.")
    dtype: Literal["float32", "uint8"] = Field(default="float32", description="Tensor element type.")
    scale: float = Field(default=1.0, description="Pixel values (0-255) are multiplied by this first.")
    mean: tuple[float, float, float] = Field(default=(0.0, 0.0, 0.0), description="Subtracted after scaling.")
    std: tuple[float, float, float] = Field(default=(1.0, 1.0, 1.0), description="Divided after the mean.")
    resize: Literal["letterbox", "stretch", "dynamic"] = Field(
        default="letterbox",
        description="letterbox: keep aspect, pad bottom/right with pad_value; stretch; dynamic: any size.",
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Padding grey level for letterboxing.")


class ModelSpec(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registry name, e.g. yolox_nano.")
    file: str = Field(description="Path of the file relative to its base directory.")
    base: str = Field(default="models", description="'models' (the models dir) or 'package:NAME'.")
    sha256: str = Field(description="Lower-case hex sha256 of the file.")
    task: Literal["detection", "text_detection", "text_recognition", "text_direction"] = Field(
        description="What the model does."
    )
    input: InputSpec = Field(description="Input tensor specification.")
    labels: list[str] = Field(default_factory=list, description="Class names by output index.")
    licence: str = Field(description="Licence of the weights (SPDX id where possible).")
    source: str = Field(description="Where the file comes from (upstream URL / package) and caveats.")
    card: str | None = Field(default=None, description="Model card, relative to the models package.")

    @field_validator("sha256")
    @classmethod
    def _hash(cls, value: str) -> str:
        if not SHA256_RE.match(value):
            raise ValueError("sha256 must be 64 lower-case hex characters")
        return value

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        if value != "models" and not (value.startswith("package:") and len(value) > len("package:")):
            raise ValueError("base must be 'models' or 'package:NAME'")
        return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissingError(f"Python package {name!r} is not installed (it ships the model files)")
    return Path(next(iter(spec.submodule_search_locations)))


class Registry:
    """The registered models and where their files are; ``path_for`` verifies before use."""

    def __init__(
        self, specs: dict[str, ModelSpec], *, models_dir: Path | None = None, source: Path | None = None
    ) -> None:
        self.specs = specs
        self.models_dir = models_dir if models_dir is not None else default_models_dir()
        self.source = source
        self._verified: dict[tuple[str, int, int], str] = {}

    @classmethod
    def load(cls, path: Path | None = None, *, models_dir: Path | None = None) -> Registry:
        path = path or REGISTRY_FILE
        try:
            raw = toml_loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryFormatError(f"cannot read model registry {path}: {exc}") from exc
        specs: dict[str, ModelSpec] = {}
        for name, entry in dict(raw.get("models", {})).items():
            try:
                specs[name] = ModelSpec.model_validate({"name": name, **entry})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise RegistryFormatError(f"{path}: model {name!r}, field {where}: {first['msg']}") from exc
        return cls(specs, models_dir=models_dir, source=path)

    def names(self) -> list[str]:
        return sorted(self.specs)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"no model named {name!r} in the registry (known: {known})") from None

    def location(self, name: str) -> Path:
        """Where the file should be (not checked)."""
        spec = self.spec(name)
        if spec.base == "models":
            return self.models_dir / spec.file
        return _package_dir(spec.base.split(":", 1)[1]) / spec.file

    def path_for(self, name: str) -> Path:
        """The verified path of model ``name``; raises if missing or if its hash differs."""
        spec = self.spec(name)
        path = self.location(name)
        if not path.is_file():
            hint = f" (set {ENV_MODELS_DIR} to the folder that holds it)" if spec.base == "models" else ""
            raise ModelFileMissingError(f"model {name!r}: file {path} not found{hint}")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        actual = self._verified.get(key) or file_sha256(path)
        if actual != spec.sha256:
            raise ModelHashMismatchError(name, path, spec.sha256, actual)
        self._verified[key] = actual
        return path

    def verify(self, name: str) -> dict[str, Any]:
        """A report for ``models verify``: ok, path and the error in words if not ok."""
        try:
            path = self.path_for(name)
        except ModelError as exc:
            return {"name": name, "ok": False, "path": _safe_location(self, name), "error": str(exc)}
        return {"name": name, "ok": True, "path": str(path), "error": None}


def _safe_location(registry: Registry, name: str) -> str | None:
    try:
        return str(registry.location(name))
    except ModelError:
        return None
