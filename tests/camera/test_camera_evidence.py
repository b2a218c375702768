"""Evidence: privacy blurring, clean offender crop, plate OCR, signed envelope verification."""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.camera.config import EvidenceConfig
from agent.camera.detector import YoloxDetector
from agent.camera.evidence import EvidenceBuilder, plate_band
from agent.camera.geometry import Box
from agent.camera.kalman import KalmanBox
from agent.camera.plates import PlateRead, RapidOcrPlateReader, plate_text
from agent.camera.rules import Violation
from agent.camera.scenegen import add_plate, clip_car_sprites, drawn_vehicle, person_sprite, road_background
from agent.camera.sink import EVENT_IMAGE_BUDGET, MemorySink, image_limit, place_image, publish_violation
from agent.camera.tracker import Track
from agent.config import OutboxSection
from fleet.evidence import EvidenceHashError, EvidenceSignatureError, strip_inline, verify_evidence
from hw.camera import Frame
from models.registry import Registry

PLATE = "29A-123.45"
OTHER_PLATE = "30F-999.99"


def _paste(image: np.ndarray, sprite_image: np.ndarray, x: int, y: int) -> Box:
    h, w = sprite_image.shape[:2]
    image[y : y + h, x : x + w] = sprite_image
    return (float(x), float(y), float(x + w), float(y + h))


@pytest.fixture(scope="module")
def scene() -> tuple[Frame, Box, Box, Box]:
    """640x400 road: the offender (a real car cut from the clip, with a plate), a bystander car with
    a plate, and a person (scikit-image's astronaut)."""
    image = road_background(640, 400, [120.0, 280.0], seed=2)
    cars = clip_car_sprites()
    base = (
        cars[1].rotated90().rotated90().rotated90()
        if cars
        else drawn_vehicle("car", np.random.default_rng(1))
    )
    offender = _paste(image, add_plate(base.scaled(240), PLATE).image, 60, 120)
    other_sprite = add_plate(
        drawn_vehicle("car", np.random.default_rng(3)).rotated90().scaled(200), OTHER_PLATE
    )
    other = _paste(image, other_sprite.image, 300, 150)
    person = _paste(image, person_sprite().scaled(190).image, 500, 60)
    return Frame(image=image, seq=42, t=4.2, wall=1_790_000_000.0), offender, other, person


@pytest.fixture(scope="module")
def plate_reader(registry: Registry) -> RapidOcrPlateReader:
    return RapidOcrPlateReader(registry, threads=1)


def _violation(box: Box) -> Violation:
    track = Track(id=7, kf=KalmanBox(box), score=0.9, born_t=0.0, state="active", last_box=box)
    return Violation("red_light", "rl-north", track, box, 4.2, 1_790_000_000.0, 42, {"phase": "red"})


def _decode(data: bytes) -> npt.NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the evidence image does not decode"
    assert image.dtype == np.uint8, f"decoded evidence image is {image.dtype}, expected 8-bit pixels"
    return cast("npt.NDArray[np.uint8]", image)


def _region(image: np.ndarray, box: Box) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    return image[y1:y2, x1:x2].astype(np.float32)


@pytest.fixture(scope="module")
def bundle(scene: Any, detector: YoloxDetector, plate_reader: RapidOcrPlateReader) -> Any:
    frame, offender, other, _person = scene
    builder = EvidenceBuilder(EvidenceConfig(), "cam-1", plate_reader, detector)
    return builder.build(frame, _violation(offender), [other], [])


def test_people_and_other_plates_are_blurred_but_not_the_offender_crop(scene: Any, bundle: Any) -> None:
    frame, offender, other, person = scene
    scene_img = _decode(bundle.images[0].data)
    crop = _decode(bundle.images[1].data)
    assert [i.role for i in bundle.images] == ["scene", "vehicle"]
    before, after = _region(frame.image, person).var(), _region(scene_img, person).var()
    assert after < 0.35 * before, f"person not blurred: variance {before:.0f} -> {after:.0f}"
    band = plate_band(other, EvidenceConfig().plate_band)
    assert _region(scene_img, band).var() < 0.5 * _region(frame.image, band).var(), "bystander plate blurred"
    original = _region(frame.image, offender)
    in_scene = _region(scene_img, offender)[40:, :]  # below the caption bar
    assert abs(float(in_scene.var()) - float(original[40:, :].var())) < 0.15 * float(original.var())
    x1, y1 = (
        int(offender[0] - 0.12 * (offender[2] - offender[0])),
        int(offender[1] - 0.12 * (offender[3] - offender[1])),
    )
    h, w = original.shape[:2]
    inner = crop[int(offender[1]) - max(0, y1) :][:h, int(offender[0]) - max(0, x1) :][:, :w].astype(
        np.float32
    )
    assert np.abs(inner - original).mean() < 4.0, "offender crop is the clean original (JPEG only)"


def test_plate_is_read_from_the_offender_crop(bundle: Any) -> None:
    assert bundle.plate is not None
    assert bundle.plate.text.replace(" ", "") == PLATE and bundle.plate.score >= 0.6


def test_plate_text_rules() -> None:
    assert plate_text([(0, 0, "29-B1", 0.9), (20, 0, "123.45", 0.95)], 0.6) == PlateRead("29-B1 123.45", 0.9)
    assert plate_text([(0, 0, "TOYOTA", 0.99)], 0.6) is None, "no digits: not a plate"
    assert plate_text([(0, 0, "29A12345", 0.3)], 0.6) is None, "not legible enough"


def test_signed_envelope_verifies_and_any_change_is_detected(
    bundle: Any, scene: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = Ed25519PrivateKey.generate()
    sink = MemorySink(device="cam-hn-gbt-0042", key=key, kid="cam-hn-gbt-0042")
    with caplog.at_level(logging.DEBUG):
        publish_violation(sink, _violation(scene[1]), bundle, camera_id="cam-1", inline_max=20_000)
    assert PLATE not in caplog.text, "plate text is never logged"
    (envelope,) = sink.envelopes
    data = envelope["data"]
    assert {i["role"]: i["store"] for i in data["images"]} == {"scene": "inline", "vehicle": "inline"}
    assert data["plate"]["text"].replace(" ", "") == PLATE and data["rule"] == "red_light"
    blobs: dict[str, bytes] = {}
    for image in data["images"]:
        raw = base64.b64decode(image["data"])
        assert hashlib.sha256(raw).hexdigest() == image["sha256"] and len(raw) <= 20_000
        blobs[image["sha256"]] = raw
    public = key.public_key()
    report = verify_evidence(envelope, lambda _sha: None, public)
    assert report.kid == "cam-hn-gbt-0042" and len(report.images) == 2

    # The fleet keeps the bytes in its evidence store and the event without them: still verifiable.
    stored = strip_inline(envelope)
    assert all("data" not in i for i in stored["data"]["images"])
    assert len(verify_evidence(stored, blobs.get, public).images) == 2
    scene_sha = next(i["sha256"] for i in data["images"] if i["role"] == "scene")
    tampered_store = dict(blobs)
    blob = bytearray(tampered_store[scene_sha])
    blob[len(blob) // 2] ^= 0x01
    tampered_store[scene_sha] = bytes(blob)
    with pytest.raises(EvidenceSignatureError, match="does not match"):
        verify_evidence(stored, tampered_store.get, public)
    with pytest.raises(EvidenceHashError, match="not in the evidence store"):
        verify_evidence(stored, lambda _sha: None, public)

    inline = copy.deepcopy(envelope)
    image = next(i for i in inline["data"]["images"] if i["store"] == "inline")
    flipped = bytearray(base64.b64decode(image["data"]))
    flipped[100] ^= 0x01
    image["data"] = base64.b64encode(bytes(flipped)).decode()
    with pytest.raises(EvidenceSignatureError):
        verify_evidence(inline, blobs.get, public)

    changed = copy.deepcopy(envelope)
    changed["data"]["ts"] = changed["data"]["ts"].replace("Z", "1Z")
    with pytest.raises(EvidenceSignatureError, match="does not match"):
        verify_evidence(changed, blobs.get, public)
    with pytest.raises(EvidenceSignatureError, match="does not match"):
        verify_evidence(envelope, blobs.get, Ed25519PrivateKey.generate().public_key())
    unsigned = {k: v for k, v in envelope.items() if k != "sig"}
    with pytest.raises(EvidenceSignatureError, match="not signed"):
        verify_evidence(unsigned, blobs.get, public)


def test_a_large_image_is_shrunk_to_fit_inside_the_event(bundle: Any) -> None:
    scene_image = bundle.images[0]
    assert len(scene_image.data) > 8_000
    placed = place_image(scene_image, inline_max=8_000)
    raw = base64.b64decode(placed["data"])
    assert placed["store"] == "inline" and len(raw) <= 8_000
    assert hashlib.sha256(raw).hexdigest() == placed["sha256"] != scene_image.sha256
    assert _decode(raw) is not None
    small = bundle.images[1]
    assert place_image(small, inline_max=len(small.data))["sha256"] == small.sha256, "a small one is kept"


def test_all_images_of_a_violation_fit_one_event() -> None:
    assert image_limit(2, 96 * 1024) == EVENT_IMAGE_BUDGET // 2 < 96 * 1024
    assert image_limit(2, 20_000) == 20_000
    assert image_limit(50, 96 * 1024) == 4096, "never below a legible minimum"
    # base64 of the whole budget plus the event's other fields stays under the agent's event limit
    assert OutboxSection().max_event_bytes > EVENT_IMAGE_BUDGET * 4 // 3 + 8 * 1024
