"""Document photo → cleaned page: outline, perspective correction, contrast clean, blur and glare checks.

Pure functions on ``numpy`` images (OpenCV imported inside). :func:`clean_page` finds the page as
the largest bright four-cornered region, warps it to an upright A4 page, flattens uneven lighting
(shadows) by dividing by a blurred background and stretches the contrast. It refuses a photo, with a
reason in both languages that tells the resident what to do, when no page is found, when the page
is blurred (variance of the Laplacian on the corrected page) or when a lamp's reflection has burnt
out part of it (saturated area).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]

PAGE_W, PAGE_H = 827, 1169
"""Corrected page size: A4 at 100 dpi."""
MIN_SHARPNESS = 60.0
"""Variance of the Laplacian of the corrected page below which it is refused as blurred."""
MAX_GLARE = 0.01
"""Largest share of the page allowed to be burnt out (all channels ≥ 250)."""
MIN_PAGE_AREA = 0.12
"""Smallest share of the photo a page may cover."""
MAX_PAGE_AREA = 0.92
"""Largest share: a page edge must show against the tray."""


@dataclass(frozen=True)
class PageResult:
    ok: bool
    reason_vi: str = ""
    reason_en: str = ""
    corners: tuple[tuple[float, float], ...] = ()
    """Found page corners in the photo: top-left, top-right, bottom-right, bottom-left."""
    sharpness: float = 0.0
    glare: float = 0.0
    page: Image | None = None
    """The cleaned page (grey, PAGE_W×PAGE_H) when ok."""


def order_corners(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Top-left, top-right, bottom-right, bottom-left (by sums and differences of coordinates)."""
    by_sum = sorted(points, key=lambda p: p[0] + p[1])
    by_diff = sorted(points, key=lambda p: p[1] - p[0])
    return (by_sum[0], by_diff[0], by_sum[-1], by_diff[-1])


def find_page(photo: Image) -> tuple[tuple[float, float], ...] | None:
    """The page's four corners, or None when no large four-cornered bright region is found."""
    import cv2
    import numpy as np

    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    grey = cv2.GaussianBlur(grey, (5, 5), 0)
    _, mask = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    share = cv2.contourArea(outline) / (photo.shape[0] * photo.shape[1])
    if not MIN_PAGE_AREA <= share <= MAX_PAGE_AREA:
        return None  # too small, or the whole frame (no page edge against the tray)
    hull = cv2.convexHull(outline)
    quad = cv2.approxPolyDP(hull, 0.02 * cv2.arcLength(hull, True), True)
    if len(quad) != 4:
        return None
    corners = [(float(x), float(y)) for x, y in quad.reshape(4, 2)]
    return order_corners(corners)


def clean_page(photo: Image) -> PageResult:
    import cv2
    import numpy as np

    corners = find_page(photo)
    if corners is None:
        return PageResult(
            False,
            "Không thấy trang giấy. Đặt cả trang vào khay, trên nền tối, rồi chụp lại.",
            "No page found. Put the whole page in the tray and take the photo again.",
        )
    src = np.array(corners, dtype=np.float32)
    dst = np.array([[0, 0], [PAGE_W - 1, 0], [PAGE_W - 1, PAGE_H - 1], [0, PAGE_H - 1]], dtype=np.float32)
    colour = cv2.warpPerspective(photo, cv2.getPerspectiveTransform(src, dst), (PAGE_W, PAGE_H))
    inner = colour[8:-8, 8:-8]
    glare = float(np.mean(np.all(inner >= 250, axis=2)))
    grey = cv2.cvtColor(inner, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    if sharpness < MIN_SHARPNESS:
        return PageResult(
            False,
            "Ảnh bị mờ. Giữ yên trang giấy rồi chụp lại.",
            "The photo is blurred. Keep the page still and take it again.",
            corners,
            sharpness,
            glare,
        )
    if glare > MAX_GLARE:
        return PageResult(
            False,
            "Trang bị loá sáng. Nghiêng trang một chút rồi chụp lại.",
            "Light glares on the page. Tilt it a little and take it again.",
            corners,
            sharpness,
            glare,
        )
    full = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    background = cv2.medianBlur(cv2.dilate(full, np.ones((7, 7), np.uint8)), 31)
    flat = cv2.divide(full, background, scale=255)
    cleaned = cv2.normalize(flat, None, 0, 255, cv2.NORM_MINMAX)
    page = np.asarray(cleaned, dtype=np.uint8)
    return PageResult(True, corners=corners, sharpness=sharpness, glare=glare, page=page)


def bare_warp(photo: Image, corners: tuple[tuple[float, float], ...]) -> Image:
    """The baseline for the benchmark: one perspective warp with known corners."""
    import cv2
    import numpy as np

    src = np.array(corners, dtype=np.float32)
    dst = np.array([[0, 0], [PAGE_W - 1, 0], [PAGE_W - 1, PAGE_H - 1], [0, PAGE_H - 1]], dtype=np.float32)
    warped = cv2.warpPerspective(photo, cv2.getPerspectiveTransform(src, dst), (PAGE_W, PAGE_H))
    return np.asarray(warped, dtype=np.uint8)
