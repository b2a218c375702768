"""Telex input (kiosk_ui/static/telex.js) run in node: the same file the page uses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

TELEX_JS = Path(__file__).resolve().parents[2] / "kiosk_ui" / "static" / "telex.js"

CASES = [
    # (keys typed, expected text)
    ("aa", "â"),
    ("aw", "ă"),
    ("ee", "ê"),
    ("oo", "ô"),
    ("ow", "ơ"),
    ("uw", "ư"),
    ("dd", "đ"),
    ("DD", "Đ"),
    ("Dd", "Đ"),
    ("as", "á"),
    ("af", "à"),
    ("ar", "ả"),
    ("ax", "ã"),
    ("aj", "ạ"),
    ("asz", "a"),
    ("ass", "as"),
    ("aaa", "aa"),
    ("aww", "aw"),
    ("ddd", "dd"),
    ("Vieejt Nam", "Việt Nam"),
    ("nguowif", "người"),
    ("Nguyeexn", "Nguyễn"),
    ("tieengs", "tiếng"),
    ("ddawng kys keets hoon", "đăng ký kết hôn"),
    ("kets", "két"),
    ("quas", "quá"),
    ("quoocs", "quốc"),
    ("gif", "gì"),
    ("giuwx", "giữ"),
    ("giuwowngf", "giường"),
    ("thuyeenf", "thuyền"),
    ("khuyeens", "khuyến"),
    ("toans", "toán"),
    ("toasn", "toán"),  # tone typed before the final consonant moves to the right vowel
    ("hoaf", "hòa"),
    ("hoanf", "hoàn"),
    ("thuys", "thúy"),
    ("muaf", "mùa"),
    ("cuar", "của"),
    ("ngoaif", "ngoài"),
    ("tuooir", "tuổi"),
    ("muwowif", "mười"),
    ("duowcj", "dược"),
    ("huwux", "hữu"),
    ("tuaan", "tuân"),
    ("ketes", "kết"),
    ("chuwngs thuwcj", "chứng thực"),
    ("xacs nhaanj cuw trus", "xác nhận cư trú"),
    ("HOOJ TICHJ", "HỘ TỊCH"),
    ("123 abc-4", "123 abc-4"),
]
NEW_STYLE = [("hoaf", "hoà"), ("thuys", "thuý"), ("hoef", "hoè"), ("muaf", "mùa")]

HARNESS = """
const Telex = require(process.argv[1]);
const cases = JSON.parse(process.argv[2]);
const style = process.argv[3];
process.stdout.write(JSON.stringify(cases.map(([keys]) => Telex.type(keys, {style}))));
"""


def run_node(cases: list[tuple[str, str]], style: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = subprocess.run(
        [node, "-e", HARNESS, str(TELEX_JS), json.dumps(cases), style],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result: list[str] = json.loads(out.stdout)
    return result


def test_telex_old_style_tone_placement() -> None:
    got = run_node(CASES, "old")
    wrong = [(keys, want, have) for (keys, want), have in zip(CASES, got, strict=True) if want != have]
    assert wrong == []


def test_telex_new_style_tone_placement() -> None:
    got = run_node(NEW_STYLE, "new")
    assert got == [want for _, want in NEW_STYLE]


def test_telex_apply_keeps_text_before_the_word() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = (
        "const T = require(process.argv[1]);"
        "process.stdout.write(JSON.stringify([T.apply('dang ky', 's'), T.apply('Hà Nội ', '5'), "
        "T.apply('', 'w'), T.apply('x', ' ')]))"
    )
    out = subprocess.run([node, "-e", script, str(TELEX_JS)], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == ["dang ký", "Hà Nội 5", "w", "x "]
