"""Document photo → cleaned page: the kiosk's page pipeline vs a bare OpenCV warp of the same photo.

Photos come from the simulated document camera (1600×1200, printed A4 page skewed 0-30°, tilted,
shadowed). ours: ``kiosk_ui.docpipeline.clean_page`` (page outline, perspective correction, blur and
glare checks, shadow flattening). baseline: one ``warpPerspective`` with the true corners given.

Second measure, "on screen": the same photos through the kiosk app — ``POST /api/submit/capture``
(camera → pipeline → JPEG kept in the session → the documents screen rendered) and the page image
fetched back (``GET /part/page/...``), in-process over HTTP (no browser); a camera stand-in hands
over the prepared photo so the simulated camera's drawing time is not counted.

    python -m bench.kiosk_docpage [--runs 20]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import exit_on_sigterm, parser, report
from hw.doccam import SimulatedDocumentCamera
from kiosk_ui.docpipeline import bare_warp, clean_page

if TYPE_CHECKING:
    from hw.doccam import Image


@dataclass
class PreparedPhoto:
    """A document camera that hands over the photo put in ``photo``."""

    photo: Any = None
    taken: list[int] = field(default_factory=list)

    def capture(self) -> Image:
        self.taken.append(1)
        result: Image = self.photo.copy()
        return result

    def close(self) -> None:
        self.photo = None


def on_screen(photos: list[Any]) -> list[float]:
    """ms from the capture request to the cleaned page's image received, for each photo."""
    from starlette.testclient import TestClient

    from kiosk_ui.app import create_app
    from kiosk_ui.harness import settings_for_tests
    from kiosk_ui.server import build

    camera = PreparedPhoto()
    with tempfile.TemporaryDirectory() as tmp:
        kiosk = build(settings_for_tests(Path(tmp), 0, simulate_peripherals=True))
        kiosk.core.devices.doccam = camera
        times: list[float] = []
        with TestClient(create_app(kiosk.state)) as client:
            sid = client.post("/api/session", json={}).json()["sid"]
            head = {"x-kiosk-session": sid}
            client.post("/api/submit/start", json={"procedure": "ht-khai-sinh"}, headers=head)
            state = kiosk.core.store.get(sid).submission
            assert state is not None
            state.step = "documents"
            for n, photo in enumerate(photos):
                camera.photo = photo
                body: dict[str, Any] = {"document": "giay_chung_sinh"} | ({"replace": 0} if n else {})
                start = time.perf_counter()
                screen = client.post("/api/submit/capture", json=body, headers=head)
                image = client.get(f"/part/page/giay_chung_sinh/0?sid={sid}&v={n}")
                times.append((time.perf_counter() - start) * 1000)
                if "message-error" in screen.text or image.status_code != 200:
                    raise SystemExit(f"photo {n}: refused on the way to the screen")
        kiosk.core.shutdown()
        kiosk.core.link.stop()
    return times


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    exit_on_sigterm()
    args = parser(__doc__ or "", runs=20).parse_args()
    ours: list[float] = []
    base: list[float] = []
    photos = []
    for run in range(args.runs):
        camera = SimulatedDocumentCamera(skew_deg=(run * 7) % 31, seed=run + 1)
        photo = camera.capture()
        photos.append(photo)
        corners = tuple(camera.corners)
        start = time.perf_counter()
        result = clean_page(photo)
        ours.append((time.perf_counter() - start) * 1000)
        if not result.ok:
            raise SystemExit(f"run {run}: page refused: {result.reason_en}")
        start = time.perf_counter()
        bare_warp(photo, corners)
        base.append((time.perf_counter() - start) * 1000)
    print(f"{args.runs} simulated tray photos 1600x1200")
    report("photo -> cleaned page p50", "ms", ours, base, baseline_name="bare warp")
    print(
        f"  p95: ours {p95(ours):.1f} ms, bare warp {p95(base):.1f} ms;"
        f" mean ours {statistics.mean(ours):.1f} ms"
    )
    screen = on_screen(photos)
    report("photo -> cleaned page on screen p50", "ms", screen, base, baseline_name="bare warp")
    print(f"  p95: on screen {p95(screen):.1f} ms, bare warp {p95(base):.1f} ms")


if __name__ == "__main__":
    main()
