"""A dossier registry read from a JSON or TOML file (demo and tests; fake data only).

File shape (JSON; TOML uses ``[[dossiers]]`` tables with the same keys)::

    {"dossiers": [{"code": "000.00.01.H26-260930-0012", "procedure": "...", "status": "processing",
                   "agency": "...", "received_date": "2026-09-30", "due_date": "2026-10-21",
                   "steps": [{"name": "...", "status": "done", "date": "2026-09-30"}]}]}
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleet.gateway.backends import DossierNotFound
from protocol.dossier import DOSSIER_CODE_RE, Dossier


def _toml_loads(text: str) -> Any:
    # tomllib from 3.11, tomli before (a dependency on 3.10); imported by name so mypy checks both.
    return importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli").loads(text)


DEMO_REGISTRY = Path(__file__).with_name("demo_dossiers.json")


class RegistryError(ValueError):
    """The registry file cannot be read or holds a bad dossier (the message says which)."""


def _load(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read dossier registry {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".toml":
            return _toml_loads(raw.decode("utf-8"))
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"dossier registry {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc


def _dossiers(path: Path, entries: Iterable[Any]) -> dict[str, Dossier]:
    out: dict[str, Dossier] = {}
    for index, entry in enumerate(entries):
        try:
            dossier = Dossier.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise RegistryError(f"{path}: dossier #{index}: field '{field}': {first['msg']}") from exc
        if not DOSSIER_CODE_RE.match(dossier.code):
            raise RegistryError(f"{path}: dossier #{index}: code {dossier.code!r} is not AGENCY-YYMMDD-NNNN")
        if dossier.code in out:
            raise RegistryError(f"{path}: dossier #{index}: code {dossier.code!r} appears twice")
        out[dossier.code] = dossier.with_labels()
    return out


class LocalRegistryDossierBackend:
    """Dossiers held in memory from a file; :meth:`demo` loads the packaged fake registry."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        data = _load(self.path)
        entries = data.get("dossiers") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise RegistryError(f"dossier registry {self.path} needs a top-level 'dossiers' list")
        self._dossiers = _dossiers(self.path, entries)

    @classmethod
    def demo(cls) -> LocalRegistryDossierBackend:
        return cls(DEMO_REGISTRY)

    def codes(self) -> list[str]:
        return sorted(self._dossiers)

    def lookup(self, code: str) -> Dossier:
        dossier = self._dossiers.get(code)
        if dossier is None:
            raise DossierNotFound("no dossier with this code / không tìm thấy hồ sơ có mã này")
        return dossier
