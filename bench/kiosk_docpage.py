"""Document photo → cleaned page: the kiosk's page pipeline vs a bare OpenCV warp of the same photo.

Photos come from the simulated document camera (1600×1200, printed A4 page skewed 0-30°, tilted,
shadowed). ours: ``kiosk_ui.docpipeline.clean_page`` (page outline, perspective correction, blur and
glare checks, shadow flattening). baseline: one ``warpPerspective`` with the true corners given.

    python -m bench.kiosk_docpage [--runs 20]
"""

from __future__ import annotations

import statistics
import time

from bench.common import exit_on_sigterm, parser, report
from hw.doccam import SimulatedDocumentCamera
from kiosk_ui.docpipeline import bare_warp, clean_page


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    exit_on_sigterm()
    args = parser(__doc__ or "", runs=20).parse_args()
    ours: list[float] = []
    base: list[float] = []
    for run in range(args.runs):
        camera = SimulatedDocumentCamera(skew_deg=(run * 7) % 31, seed=run + 1)
        photo = camera.capture()
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


if __name__ == "__main__":
    main()
