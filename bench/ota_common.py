"""Helpers shared by the OTA benchmarks: synthetic release files, wheels, manifests, staging."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path

from agent.ota.slots import SlotInstaller
from protocol.release import ReleaseFile, ReleaseManifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(version: str, files: Mapping[str, bytes]) -> tuple[ReleaseManifest, bytes]:
    entries = [
        ReleaseFile(
            path=path, sha256=sha(data), length=len(data), mode=0o755 if path.startswith("bin/") else 0o644
        )
        for path, data in sorted(files.items())
    ]
    manifest = ReleaseManifest(version=version, build_time="2025-01-01T00:00:00Z", files=entries)
    return manifest, manifest.to_json()


def stage(installer: SlotInstaller, files: Mapping[str, bytes]) -> None:
    installer.staging.mkdir(parents=True, exist_ok=True)
    for data in files.values():
        path = installer.staged_object(sha(data))
        if not path.exists():
            path.write_bytes(data)


def source_text(rng: random.Random, size: int) -> bytes:
    """Python-looking text that compresses about as well as real source (≈ 4:1)."""
    words = [
        "def", "return", "self", "value", "if", "else", "for", "in", "import", "from", "class",
        "None", "True", "raise", "with", "as", "data", "path", "config", "result", "item", "name",
    ]  # fmt: skip
    lines: list[str] = []
    total = 0
    while total < size:
        indent = "    " * rng.randint(0, 3)
        line = indent + " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        line += f"  # {rng.getrandbits(32):08x}"
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def make_wheel(name: str, rng: random.Random, modules: int, module_size: int, binary: int = 0) -> bytes:
    """A real wheel: ``modules`` Python files of about ``module_size`` bytes (sizes vary ×0.25–2),
    optionally one incompressible extension module of ``binary`` bytes, with a hashed RECORD."""
    dist = f"{name}-1.0.dist-info"
    members: dict[str, bytes] = {}
    for index in range(modules):
        package = f"{name}/sub{index % 12}"
        size = max(64, int(module_size * rng.uniform(0.25, 2.0)))
        members[f"{package}/m{index}.py"] = source_text(rng, size)
    for sub in range(min(modules, 12)):
        members[f"{name}/sub{sub}/__init__.py"] = b""
    members[f"{name}/__init__.py"] = b"__version__ = '1.0'\n"
    if binary:
        members[f"{name}/_core.cpython-311-x86_64-linux-gnu.so"] = rng.randbytes(binary)
    members[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    members[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [
        f"{m},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
        for m, d in members.items()
    ]
    record.append(f"{dist}/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return buffer.getvalue()


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files below ``root``."""
    total = count = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            count += 1
    return total, count
