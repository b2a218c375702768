"""Every screen in Vietnamese and English at both kiosk resolutions, in Chromium: screenshots,
targets >= 48 px, contrast >= 4.5:1, <html lang>, CSP, no request leaving the kiosk server."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kiosk_helpers import LANDSCAPE, PORTRAIT, a11y_problems, shoot, type_keys, wait_js

pytestmark = pytest.mark.browser

# How to reach each screen from home, and a text that proves the language.
SCREENS: dict[str, tuple[list[str], dict[str, str]]] = {
    "home": ([], {"vi": "Xin chào", "en": "Hello"}),
    "procedures": ([".tile-procedures"], {"vi": "Tìm thủ tục", "en": "Search procedures"}),
    "procedure": (
        [".tile-procedures", "[data-id=ht-ket-hon]"],
        {"vi": "Giấy tờ cần chuẩn bị", "en": "Documents"},
    ),
    "lookup": ([".tile-lookup"], {"vi": "Mã hồ sơ", "en": "Dossier code"}),
    "identity": ([".tile-identity"], {"vi": "Tôi đồng ý", "en": "I agree"}),
    "rating": ([".tile-rating"], {"vi": "Gửi đánh giá", "en": "Send rating"}),
    "signage": ([".tile-news"], {"vi": "Chạm vào màn hình", "en": "Touch the screen"}),
}


def go_home(page: Any) -> None:
    if page.query_selector(".screen-signage"):
        page.click(".touch-start")
    elif page.query_selector("#app [data-go=home].btn-home"):
        page.click("#app [data-go=home].btn-home")
    page.wait_for_selector(".screen-home")


@pytest.mark.parametrize("viewport", [PORTRAIT, LANDSCAPE], ids=["portrait", "landscape"])
def test_every_screen_in_both_languages(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], viewport: dict[str, int]
) -> None:
    kiosk = kiosk_factory(simulate_peripherals=True)
    page, recorder = open_page(kiosk.url + "/", viewport)
    size = f"{viewport['width']}x{viewport['height']}"
    problems: list[str] = []
    for lang in ("vi", "en"):
        go_home(page)
        if page.evaluate("document.documentElement.lang") != lang:
            page.click("#app [data-action=lang]")
            wait_js(page, f"document.documentElement.lang === '{lang}'")
        for screen, (clicks, proof) in SCREENS.items():
            go_home(page)
            for selector in clicks:
                page.click(f"#app {selector}")
            page.wait_for_selector(f".screen-{screen}")
            assert page.evaluate("document.documentElement.lang") == lang
            assert proof[lang] in page.inner_text("#app"), (screen, lang)
            shoot(page, f"{screen}-{lang}-{size}")
            problems += [f"{screen}/{lang}: {p}" for p in a11y_problems(page)]
    assert problems == []
    assert recorder.outside(kiosk.url) == []
    assert recorder.errors == []


def test_large_text_mode_keeps_targets_and_contrast(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()
    page, _ = open_page(kiosk.url + "/", PORTRAIT)
    base = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    page.click("#app [data-action=large]")
    assert page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)") >= 1.5 * base
    page.click("#app .tile-procedures")
    page.wait_for_selector(".screen-procedures")
    assert page.get_attribute("#app [data-action=large]", "aria-pressed") == "true"  # survives navigation
    shoot(page, "procedures-vi-large")
    assert a11y_problems(page) == []


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('#app *')]
    .filter(e => e.getBoundingClientRect().right > width + 1);
  return {page: document.documentElement.scrollWidth - width, wide: wide.slice(0, 5).map(e => e.className)};
}"""


@pytest.mark.parametrize("viewport", [PORTRAIT, LANDSCAPE], ids=["portrait", "landscape"])
def test_large_text_still_fits_every_screen(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], viewport: dict[str, int]
) -> None:
    kiosk = kiosk_factory(simulate_peripherals=True)
    page, _ = open_page(kiosk.url + "/", viewport)
    page.click("#app [data-action=large]")
    size = f"{viewport['width']}x{viewport['height']}"
    misfits: dict[str, Any] = {}
    for screen, (clicks, _) in SCREENS.items():
        go_home(page)
        for selector in clicks:
            page.click(f"#app {selector}")
        page.wait_for_selector(f".screen-{screen}")
        found = page.evaluate(OVERFLOW_JS)
        if found["page"] > 0 or found["wide"]:
            misfits[screen] = found
        shoot(page, f"{screen}-vi-{size}-large")
    assert misfits == {}


def test_font_comes_from_the_kiosk_server(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()
    if not kiosk.kiosk.state.fonts.fonts:
        pytest.skip("fonts-noto-core is not installed: the page falls back to the system font stack")
    page, recorder = open_page(kiosk.url + "/")
    page.evaluate("document.fonts.ready")
    assert page.evaluate("document.fonts.check('20px \"Kiosk Sans\"', 'Đăng ký kết hôn')")
    assert any(u.endswith("/font/regular.woff") for u in recorder.urls)
    assert recorder.outside(kiosk.url) == []


def test_search_without_diacritics_and_with_telex(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()
    page, recorder = open_page(kiosk.url + "/")
    page.click("#app .tile-procedures")
    page.wait_for_selector(".screen-procedures")
    page.click("#app [data-action=telex]")  # plain letters, no accents
    type_keys(page, "dang ky ket hon")
    assert page.inner_text("#q") == "dang ky ket hon"
    wait_js(page, "document.querySelector('#results .result-name')?.textContent === 'Đăng ký kết hôn'")
    shoot(page, "search-plain-vi")
    page.click("#app [data-key=CLEAR]")
    page.click("#app [data-action=telex]")  # Telex on: the keyboard writes Vietnamese
    type_keys(page, "chuwngs thuwcj ban sao")
    assert page.inner_text("#q") == "chứng thực ban sao"
    wait_js(
        page,
        "document.querySelector('#results .result-name')?.textContent === 'Chứng thực bản sao từ bản chính'",
    )
    shoot(page, "search-telex-vi")
    page.click("#app [data-action=lang]")  # the query survives the language switch
    wait_js(page, "document.documentElement.lang === 'en'")
    assert page.inner_text("#q") == "chứng thực ban sao"
    assert page.inner_text("#results .result-name") == "Certified copy from an original"
    page.click("#app #results .result")
    page.wait_for_selector(".screen-procedure")
    assert "VND 2,000" in page.inner_text("#app")
    assert recorder.outside(kiosk.url) == []


def test_headers_forbid_other_sources_caching_and_cookies(kiosk_factory: Callable[..., Any]) -> None:
    kiosk = kiosk_factory()
    for path in ("/", "/static/kiosk.js", "/healthz"):
        with urllib.request.urlopen(kiosk.url + path) as response:
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "*" not in csp
            assert response.headers.get("set-cookie") is None
            assert response.headers["cache-control"] in ("no-store", "no-cache")


def test_the_accessibility_check_catches_small_and_faint_targets(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()
    page, _ = open_page(kiosk.url + "/")
    page.evaluate(
        """() => { const b = document.createElement('button'); b.textContent = 'x';
        b.style.width = '30px'; b.style.height = '30px'; b.style.color = '#bbbbbb';
        b.style.background = '#ffffff'; b.style.minHeight = '0'; b.style.minWidth = '0';
        document.querySelector('#app .content').appendChild(b); }"""
    )
    problems = a11y_problems(page)
    assert any(p.startswith("small target") for p in problems)
    assert any(p.startswith("low contrast") for p in problems)


def test_home_tiles_fill_the_portrait_screen_and_submittable_procedures_are_marked(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()
    page, _ = open_page(kiosk.url + "/", PORTRAIT)
    tiles = page.evaluate(
        "Array.from(document.querySelectorAll('#app .tile')).map(t => t.getBoundingClientRect())"
        ".map(r => ({w: r.width, h: r.height, bottom: r.bottom}))"
    )
    assert len(tiles) == 5
    assert all(t["w"] >= 900 and t["h"] >= 200 for t in tiles)  # one column of large targets
    assert tiles[-1]["bottom"] >= 0.8 * PORTRAIT["height"]  # the tiles use the tall screen
    shoot(page, "home-vi-portrait-tiles")
    page.click("#app .tile-procedures")
    page.wait_for_selector("#app .result")
    assert page.locator("#app .badge-submit").count() == 5
    assert page.inner_text("#app [data-id=cu-thuong-tru] .badge-submit") == "Nộp hồ sơ tại máy này"
