"""Kiosk UI in Chromium: first screen interactive, a scan reflected on screen, page weight per screen.

    python -m bench.kiosk_ui [--runs 15] [--screenshots docs/img]

- first screen interactive: navigation start → the page's ``kiosk-interactive`` mark (session
  open, handlers bound), fresh browser context each run; baseline: a static HTML page from the
  same server (``/static/baseline.html``) to its load event.
- scan reflected on screen: bytes written to the scanner's pty → the identity fields in the DOM
  (MutationObserver); baseline: an in-page fetch of the static page from the same server.
- page weight: bytes transferred (headers + bodies) for the first load and for each screen.

The app runs in-process with a pty as its scanner and a stand-in agent that answers dossier
lookups from the fleet gateway's demo registry (no broker needed).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import exit_on_sigterm, median, parser, report
from fleet.broker import free_port
from kiosk_ui.harness import PtyScanner, ThreadedKiosk, settings_for_tests

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARGS += ["--disable-sync", "--no-first-run"]
PORTRAIT = {"width": 1080, "height": 1920}
LANDSCAPE = {"width": 1920, "height": 1080}
GOOD_CODE = "000.00.01.H26-260930-0012"
FETCH_JS = """async () => { const t = performance.now();
  await (await fetch('/static/baseline.html', {cache: 'no-store'})).text(); return performance.now() - t; }"""
SEEN_JS = """(selector) => { window.__seen = 0; new MutationObserver((m, o) => {
  if (document.querySelector(selector)) { window.__seen = Date.now(); o.disconnect(); } })
  .observe(document.getElementById('app'), {childList: true, subtree: true}); }"""


class DemoAgent:
    """Stands in for the agent: dossier lookups answered by the fleet gateway's demo registry."""

    def __init__(self) -> None:
        from fleet.gateway import GatewayConfig, build_dossier_service

        self.service = build_dossier_service(GatewayConfig())

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        return {"id": "bench", "seq": 0}

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self.service.call(method, params, "kiosk-bench-0001")

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        return None

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        return None

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        return {}

    def desired_config(self) -> dict[str, Any]:
        return {}


def cccd(i: int) -> str:
    """An invented CCCD payload; ids differ per run so the scanner does not drop repeats."""
    address = "Số 12 ngõ 34 Khương Đình, Hà Nội"
    return f"00119901{i:04d}|012345678|Nguyễn Thị Minh Hằng|15081999|Nữ|{address}|01032021"


def wait_until(page: Any, expression: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {expression}")


def first_screen(browser: Any, url: str, runs: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    static: list[float] = []
    for i in range(runs + 1):  # the first run warms the server's caches and is dropped
        for kind in ("kiosk", "static") if i % 2 else ("static", "kiosk"):
            context = browser.new_context(viewport=PORTRAIT)
            page = context.new_page()
            if kind == "kiosk":
                page.goto(url + "/")
                page.wait_for_selector("html[data-ready=yes]")
                value = page.evaluate("performance.getEntriesByName('kiosk-interactive')[0].startTime")
            else:
                page.goto(url + "/static/baseline.html", wait_until="load")
                value = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            if i:
                (ours if kind == "kiosk" else static).append(float(value))
            context.close()
    return ours, static


def scan_latency(browser: Any, url: str, scanner: PtyScanner, runs: int) -> tuple[list[float], list[float]]:
    context = browser.new_context(viewport=PORTRAIT)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("html[data-ready=yes]")
    page.click("#app .tile-identity")
    scans: list[float] = []
    fetches: list[float] = []
    for i in range(runs + 1):
        page.click("#app [data-post='/api/identity/consent']")
        page.wait_for_selector("#app .scan-prompt")
        page.evaluate(SEEN_JS, "[data-field=masked-id]")
        started = time.time() * 1000
        scanner.write(cccd(i).encode() + b"\r\n")
        seen = wait_until(page, "window.__seen")
        fetch = page.evaluate(FETCH_JS)
        if i:
            scans.append(float(seen) - started)
            fetches.append(float(fetch))
        page.click("#app [data-post='/api/identity/clear']")
        page.wait_for_selector("#app .consent")
    context.close()
    return scans, fetches


def receipt_scan_latency(browser: Any, url: str, scanner: PtyScanner, runs: int) -> list[float]:
    """Receipt QR written to the scanner → the dossier (looked up through the agent) on screen."""
    context = browser.new_context(viewport=PORTRAIT)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("html[data-ready=yes]")
    out: list[float] = []
    for i in range(runs + 1):
        page.evaluate(SEEN_JS, "#app .dossier")
        started = time.time() * 1000
        scanner.write(f"https://dichvucong.hanoi.gov.vn/tra-cuu?code={GOOD_CODE}&n={i}\r\n".encode())
        seen = wait_until(page, "window.__seen")
        if i:
            out.append(float(seen) - started)
        page.click("#app .btn-home")
        page.wait_for_selector(".screen-home")
    context.close()
    return out


SCREENS = [
    ("procedures", ".tile-procedures"),
    ("procedure", "[data-id=ht-ket-hon]"),
    ("lookup", ".tile-lookup"),
    ("identity", ".tile-identity"),
    ("rating", ".tile-rating"),
    ("signage", ".tile-news"),
]


def page_weight(browser: Any, url: str) -> dict[str, int]:
    context = browser.new_context(viewport=PORTRAIT)
    page = context.new_page()
    transferred: list[tuple[str, int]] = []

    def finished(request: Any) -> None:
        sizes = request.sizes()
        transferred.append((request.url, int(sizes["responseBodySize"] + sizes["responseHeadersSize"])))

    page.on("requestfinished", finished)
    page.goto(url + "/")
    page.wait_for_selector("html[data-ready=yes]")
    page.evaluate("document.fonts.ready.then(() => true)")
    page.wait_for_timeout(300)  # lets Playwright deliver the request events (time.sleep would not)
    weights = {"first load (shell, CSS, JS, fonts)": sum(n for _, n in transferred)}
    weights["  of which fonts"] = sum(n for u, n in transferred if "/font/" in u)
    for name, selector in SCREENS:
        if name != "procedure":
            if page.query_selector("#app .btn-home"):
                page.click("#app .btn-home")
            page.wait_for_selector(".screen-home")
        transferred.clear()
        page.click(f"#app {selector}")
        page.wait_for_selector(f".screen-{name}")
        page.wait_for_timeout(200)
        weights[name] = sum(n for u, n in transferred if "/api/heartbeat" not in u)
        if name == "signage":
            page.click(".touch-start")
    context.close()
    return weights


def shoot(browser: Any, url: str, scanner: PtyScanner, out: Path) -> list[Path]:
    """Small PNGs for docs/kiosk.md (360 px wide, 64 colours)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(page: Any, name: str) -> None:
        raw = out / f"kiosk-{name}.tmp.png"
        page.screenshot(path=str(raw))
        shot = Image.open(raw)
        width = 360 if shot.width < shot.height else 480
        image = shot.resize((width, round(shot.height * width / shot.width)), Image.Resampling.LANCZOS)
        small = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        small.save(out / f"kiosk-{name}.png", optimize=True)
        raw.unlink()
        paths.append(out / f"kiosk-{name}.png")

    for viewport, suffix in ((PORTRAIT, ""), (LANDSCAPE, "-landscape")):
        context = browser.new_context(viewport=viewport, reduced_motion="reduce")
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("html[data-ready=yes]")
        page.evaluate("document.fonts.ready.then(() => true)")
        save(page, f"home-vi{suffix}")
        if suffix:
            page.click("#app .tile-procedures")
            for key in "chuwngs thuwcj":
                page.click(f"#app [data-key='{'SPACE' if key == ' ' else key}']")
            time.sleep(0.4)
            save(page, "procedures-vi-landscape")
            context.close()
            continue
        page.click("#app [data-action=lang]")
        page.wait_for_selector("html[lang=en]")
        save(page, "home-en")
        page.click("#app [data-action=lang]")
        page.wait_for_selector("html[lang=vi]")
        page.click("#app .tile-procedures")
        for key in "ket hon":
            page.click(f"#app [data-key='{'SPACE' if key == ' ' else key}']")
        time.sleep(0.4)
        save(page, "procedures-vi")
        page.click("#app [data-id=ht-ket-hon]")
        page.wait_for_selector(".screen-procedure")
        save(page, "procedure-vi")
        page.click("#app .btn-home")
        page.click("#app .tile-lookup")
        for key in GOOD_CODE:
            page.click(f"#app [data-key='{key}']")
        save(page, "lookup-vi")
        page.click("#app [data-action=submit]")
        page.wait_for_selector("#app .dossier")
        save(page, "lookup-result-vi")
        page.click("#app .btn-home")
        page.click("#app .tile-identity")
        page.wait_for_selector("#app .consent")
        save(page, "identity-consent-vi")
        page.click("#app [data-post='/api/identity/consent']")
        page.wait_for_selector("#app .scan-prompt")
        scanner.write(cccd(9999).encode() + b"\r\n")
        page.wait_for_selector("[data-field=masked-id]")
        save(page, "identity-filled-vi")
        page.click("#app .btn-home")
        page.click("#app .tile-rating")
        page.click("#app [data-score='5']")
        page.click("#app [data-reason=fast]")
        save(page, "rating-vi")
        page.click("#app .btn-home")
        page.click("#app .tile-news")
        page.wait_for_selector(".screen-signage")
        save(page, "signage-vi")
        context.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], runs=15)
    p.add_argument("--screenshots", type=Path, default=None, help="also write small PNGs for the docs here")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: sudo apt-get install -y chromium fonts-noto-core", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    scanner = PtyScanner()
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for_tests(
            Path(tmp), free_port(), scanner=scanner.path, idle_s=600.0, warn_s=15.0, telemetry_s=15.0
        )
        with ThreadedKiosk(settings, client=DemoAgent()) as kiosk, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                ours, static = first_screen(browser, kiosk.url, args.runs)
                scans, fetches = scan_latency(browser, kiosk.url, scanner, args.runs)
                receipts = receipt_scan_latency(browser, kiosk.url, scanner, args.runs)
                weights = page_weight(browser, kiosk.url)
                shots = shoot(browser, kiosk.url, scanner, args.screenshots) if args.screenshots else []
            finally:
                browser.close()
    scanner.close()
    report("first screen interactive", "ms", ours, static, baseline_name="static page load")
    report(
        "CCCD scan reflected on screen", "ms", scans, fetches, baseline_name="in-page fetch of static page"
    )
    print(f"receipt QR scan -> dossier on screen (stand-in agent): {median(receipts):.1f} ms median")
    print("page weight (bytes transferred):")
    for name, size in weights.items():
        print(f"  {name:<40} {size / 1024:8.1f} KiB")
    for path in shots:
        print(f"screenshot: {path} ({path.stat().st_size // 1024} KiB)")
    summary = {
        "first_screen_ms": median(ours),
        "static_page_ms": median(static),
        "scan_ms": median(scans),
        "fetch_ms": median(fetches),
        "receipt_scan_ms": median(receipts),
        "weights_bytes": weights,
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
