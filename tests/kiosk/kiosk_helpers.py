"""Constants and helpers shared by the kiosk tests (invented data only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "kiosk"
PORTRAIT = {"width": 1080, "height": 1920}
LANDSCAPE = {"width": 1920, "height": 1080}

# A made-up resident (invented data; the id's digits match the sex/century/year rules).
CCCD_ID = "001199012345"
CCCD_NAME = "Nguyễn Thị Minh Hằng"
CCCD_ADDRESS = "Số 12 ngõ 34 phố Khương Đình, phường Khương Đình, Hà Nội"
CCCD_PAYLOAD = f"{CCCD_ID}|012345678|{CCCD_NAME}|15081999|Nữ|{CCCD_ADDRESS}|01032021"
MASKED_ID = "001*****2345"
GOOD_CODE = "000.00.01.H26-260930-0012"
MISSING_CODE = "000.00.01.H26-261001-0099"

DOSSIER: dict[str, Any] = {
    "code": GOOD_CODE,
    "procedure": "Cấp giấy phép xây dựng nhà ở riêng lẻ",
    "status": "processing",
    "agency": "UBND phường Khương Đình, Hà Nội",
    "received_date": "2026-09-30",
    "due_date": "2026-11-25",
    "steps": [
        {"name": "Tiếp nhận hồ sơ tại bộ phận một cửa", "status": "done", "date": "2026-09-30"},
        {"name": "Thẩm định hồ sơ thiết kế", "status": "done", "date": "2026-10-20"},
        {"name": "Kiểm tra thực địa", "status": "current"},
        {"name": "Ký duyệt và trả kết quả", "status": "pending"},
    ],
    "note": "Hồ sơ đang được kiểm tra thực địa.",
}


def shoot(page: Any, name: str) -> Path:
    """Keep a screenshot as a test artefact (test-artifacts/kiosk/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def type_keys(page: Any, text: str) -> None:
    """Type on the on-screen keyboard (space → the space key)."""
    for ch in text:
        key = "SPACE" if ch == " " else ch
        page.click(f"#app [data-key='{key}']")


A11Y_JS = (Path(__file__).with_name("kiosk_a11y.js")).read_text(encoding="utf-8")
"""Runs in the page: every visible target >= 48x48 CSS px, every visible text >= 4.5:1 contrast."""


def a11y_problems(page: Any) -> list[str]:
    result = page.evaluate(A11Y_JS)
    assert result["checkedText"] > 0
    return [f"small target {s}" for s in result["small"]] + [f"low contrast {f}" for f in result["faint"]]


# Every place personal data could be left in the page.
PAGE_DUMP_JS = """
() => JSON.stringify({
  dom: document.documentElement.outerHTML,
  local: Object.entries(localStorage), session: Object.entries(sessionStorage), cookies: document.cookie,
})
"""


def wait_js(page: Any, expression: str, timeout: float = 10.0) -> Any:
    """Poll ``expression`` in the page until truthy (``page.wait_for_function`` evaluates strings,
    which the kiosk's CSP forbids, as it should)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.03)
