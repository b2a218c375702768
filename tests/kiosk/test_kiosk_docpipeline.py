"""Document pipeline on generated tray photos (hw.doccam simulation): skew up to 30°, tilt, shadow.
Good pages are accepted with corners found within a few pixels and come out upright and clean;
blurred or glaring ones are refused with a retake message in both languages; no page → told so."""

from __future__ import annotations

import math

import pytest

from hw.doccam import SimulatedDocumentCamera
from kiosk_ui.docpipeline import PAGE_H, PAGE_W, clean_page, order_corners

CORNER_TOLERANCE_PX = 4.0


def corner_error(found: tuple[tuple[float, float], ...], truth: list[tuple[float, float]]) -> float:
    return max(math.dist(a, b) for a, b in zip(found, truth, strict=True))


@pytest.mark.parametrize("skew", [-30, -17, 0, 8, 22, 30])
@pytest.mark.parametrize("shadow", [0.0, 0.45])
def test_good_pages_are_found_corrected_and_cleaned(skew: float, shadow: float) -> None:
    camera = SimulatedDocumentCamera(skew_deg=skew, shadow=shadow, seed=abs(round(skew)) + 3)
    result = clean_page(camera.capture())
    assert result.ok, result.reason_en
    assert corner_error(result.corners, camera.corners) <= CORNER_TOLERANCE_PX
    page = result.page
    assert page is not None and page.shape == (PAGE_H, PAGE_W)
    # shadow flattened: the paper is as white on the shadowed side as on the lit side
    import numpy as np

    left, right = page[200:900, 20:120], page[200:900, -120:-20]
    assert abs(float(np.median(left)) - float(np.median(right))) < 12
    assert float(np.median(page)) > 230  # paper white after cleaning
    assert float(np.percentile(page, 1)) < 120  # the print is still there


@pytest.mark.parametrize("skew", [0, 15, 30])
def test_blurred_pages_are_refused_with_a_retake_message(skew: float) -> None:
    camera = SimulatedDocumentCamera(skew_deg=skew, blur_sigma=4.0, seed=round(skew) + 11)
    result = clean_page(camera.capture())
    assert not result.ok and result.page is None
    assert "chụp lại" in result.reason_vi and "again" in result.reason_en
    assert "mờ" in result.reason_vi


def test_glare_is_refused() -> None:
    result = clean_page(SimulatedDocumentCamera(glare=True).capture())
    assert not result.ok and "loá" in result.reason_vi and result.glare > 0.01


def test_no_page_is_told_so() -> None:
    import numpy as np

    result = clean_page(np.full((600, 800, 3), 50, np.uint8))
    assert not result.ok and result.corners == () and "Không thấy trang" in result.reason_vi


def test_corner_order() -> None:
    assert order_corners([(10, 90), (90, 10), (0, 0), (100, 100)]) == ((0, 0), (90, 10), (100, 100), (10, 90))
