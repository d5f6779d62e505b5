"""Calibration-set checks: each warning fires on a small folder built for it, names counts and example
files, and a sound set (the shared COCO calibration images) gives none."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from conftest import shared_path

from edgeq.calib.checks import CalibWarning, _jpeg_header, check_calibration_set
from edgeq.calib.dataset import calibration_set

IMGSZ = 320  # tiny: long side < 40 px; huge: > 1280 px


def _scene(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    """A distinct colour image: smooth random blobs plus a little noise (BGR uint8)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)


def _folder(tmp_path: Path, n: int, start: int = 0) -> list[Path]:
    paths = []
    for i in range(start, start + n):
        paths.append(tmp_path / f"scene_{i:03d}.jpg")
        cv2.imwrite(str(paths[-1]), _scene(i))
    return paths


def _codes(warnings: list[CalibWarning]) -> dict[str, CalibWarning]:
    return {w.code: w for w in warnings}


def test_a_sound_synthetic_set_gives_no_warning(tmp_path):
    _folder(tmp_path, 60)
    assert check_calibration_set(calibration_set(tmp_path), (IMGSZ, IMGSZ)) == []


def test_too_few_images_warns_and_says_why(tmp_path):
    _folder(tmp_path, 12)
    (w,) = check_calibration_set(calibration_set(tmp_path), IMGSZ)
    assert w.code == "few_images" and w.level == "warning"
    assert "only 12 calibration images" in w.what and "rare extremes" in w.what and ">= 100" in w.fix


def test_near_duplicates_are_grouped_with_their_share(tmp_path):
    paths = _folder(tmp_path, 60)
    original = cv2.imread(str(paths[0]))
    cv2.imwrite(str(tmp_path / "copy_exact.jpg"), original)
    cv2.imwrite(str(tmp_path / "copy_q40.jpg"), original, [cv2.IMWRITE_JPEG_QUALITY, 40])
    cv2.imwrite(str(tmp_path / "copy_small.png"), cv2.resize(original, (128, 96), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(tmp_path / "copy_grey.png"), cv2.cvtColor(original, cv2.COLOR_BGR2GRAY))
    found = _codes(check_calibration_set(calibration_set(tmp_path), IMGSZ))
    w = found["duplicates"]
    assert "4 of 64 images (6%)" in w.what and "1 group" in w.what and "60 distinct" in w.what
    for name in ("scene_000.jpg", "copy_exact.jpg", "copy_q40.jpg", "copy_small.png"):
        assert name in w.what
    assert paths[0] in w.files
    assert "grayscale" not in found, "one grey image in 64 is under the share that warns"


def test_a_few_duplicates_in_a_large_set_pass(tmp_path):
    paths = _folder(tmp_path, 60)
    cv2.imwrite(str(tmp_path / "copy.jpg"), cv2.imread(str(paths[3])))  # 1 of 61: under 5 %
    assert check_calibration_set(calibration_set(tmp_path), IMGSZ) == []


def test_grayscale_images_warn_whether_stored_grey_or_as_equal_channels(tmp_path):
    _folder(tmp_path, 50)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"grey1ch_{i}.jpg"), cv2.cvtColor(_scene(100 + i), cv2.COLOR_BGR2GRAY))
        grey = cv2.cvtColor(_scene(200 + i), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(tmp_path / f"grey3ch_{i}.png"), cv2.merge([grey, grey, grey]))
    (w,) = check_calibration_set(calibration_set(tmp_path), IMGSZ)
    assert w.code == "grayscale" and "greyscale images: 10 of 60 images (17%" in w.what
    assert "grey1ch_0.jpg" in w.what and "colour" in w.fix


def test_converted_storage_16bit_alpha_and_tiny_files_warn(tmp_path):
    _folder(tmp_path, 50)
    cv2.imwrite(str(tmp_path / "deep.png"), _scene(300).astype(np.uint16) * 257)
    rgba = cv2.cvtColor(_scene(301), cv2.COLOR_BGR2BGRA)
    rgba[:60, :, 3] = 0
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "one_pixel.png"), np.full((1, 1, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "thumb.jpg"), _scene(302, 24, 32))
    found = _codes(check_calibration_set(calibration_set(tmp_path), IMGSZ))
    assert set(found) == {"deep", "alpha", "tiny", "flat"}
    assert found["deep"].what.startswith("16-bit images: 1 of 54 images") and "deep.png" in found["deep"].what
    assert "8-bit" in found["deep"].fix
    assert "alpha" in found["alpha"].what and "rgba.png" in found["alpha"].what and "flatten" in found["alpha"].fix
    tiny = found["tiny"]
    assert "2 of 54 images" in tiny.what and "one_pixel.png" in tiny.what and "smallest 1x1" in tiny.what
    assert tiny.files[0] == tmp_path / "one_pixel.png"
    assert "one_pixel.png" in found["flat"].what, "a 1x1 image is one colour"


def test_cmyk_and_grey_jpegs_are_read_from_the_frame_header():
    def jpeg(components: int, precision: int = 8) -> np.ndarray:
        app = b"\xff\xe1" + struct.pack(">H", 18) + b"Exif\x00\x00" + bytes(10)  # skipped by length
        sof = b"\xff\xc2" + struct.pack(">HBHHB", 8 + 3 * components, precision, 480, 640, components)
        sof += bytes(3 * components)
        return np.frombuffer(b"\xff\xd8" + app + sof + b"\xff\xda", np.uint8)

    assert _jpeg_header(jpeg(4)) == ((640, 480), ("CMYK",), False)
    assert _jpeg_header(jpeg(3)) == ((640, 480), (), False)
    assert _jpeg_header(jpeg(1)) == ((640, 480), (), True)
    assert _jpeg_header(jpeg(3, 12)) == ((640, 480), ("12-bit",), False)
    assert _jpeg_header(np.frombuffer(b"\x89PNG....", np.uint8)) is None


def test_huge_images_are_a_note_not_a_warning(tmp_path):
    _folder(tmp_path, 50)
    cv2.imwrite(str(tmp_path / "huge.jpg"), _scene(400, 1000, 1400))
    (w,) = check_calibration_set(calibration_set(tmp_path), IMGSZ)
    assert w.code == "huge" and w.level == "info" and "huge.jpg" in w.what and "1400x1000" in w.what
    assert w.log_level < 30


def test_blank_dark_and_low_contrast_sets_warn(tmp_path):
    dark, flat, dull = (tmp_path / d for d in ("dark", "flat", "dull"))
    for d in (dark, flat, dull):
        d.mkdir()
    for i in range(50):
        scene = _scene(i).astype(np.float32)
        cv2.imwrite(str(dark / f"{i}.jpg"), (scene * 0.15).astype(np.uint8))
        cv2.imwrite(str(dull / f"{i}.jpg"), (scene * 0.15 + 100).astype(np.uint8))
        cv2.imwrite(str(flat / f"{i}.jpg"), _scene(i) if i % 5 else np.full((120, 160, 3), 5 * i, np.uint8))
    dark_found = _codes(check_calibration_set(calibration_set(dark), IMGSZ))
    assert "dark" in dark_found and "mean grey level is" in dark_found["dark"].what
    dull_found = _codes(check_calibration_set(calibration_set(dull), IMGSZ))
    assert set(dull_found) == {"low_contrast"}
    (w,) = check_calibration_set(calibration_set(flat), IMGSZ)
    assert w.code == "flat" and "10 of 50 images (20%" in w.what and w.fix == "remove them"


def test_paths_and_unreadable_files_are_accepted(tmp_path):
    paths = _folder(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "empty.png").write_bytes(b"")
    warnings = check_calibration_set([*paths, tmp_path / "broken.jpg", tmp_path / "empty.png"], (IMGSZ, IMGSZ))
    assert [w.code for w in warnings] == ["few_images"] and "only 5 calibration images" in warnings[0].what
    assert str(warnings[0]).endswith(warnings[0].fix)


def test_the_shared_coco_calibration_set_is_sound():
    calib = calibration_set(shared_path("coco-calib"))
    assert len(calib) >= 200
    assert check_calibration_set(calib, (640, 640)) == []


def test_formats_without_a_parsed_header_are_read_in_full(tmp_path):
    """TIFF, BMP and WebP are decoded once unchanged: depth and channels come from the pixels."""
    paths = _folder(tmp_path, 50)
    cv2.imwrite(str(tmp_path / "deep.tif"), _scene(500).astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "alpha.tif"), cv2.cvtColor(_scene(501), cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "plain.bmp"), _scene(502))
    found = _codes(check_calibration_set([*paths, *(tmp_path / n for n in ("deep.tif", "alpha.tif", "plain.bmp"))], IMGSZ))
    assert set(found) == {"deep", "alpha"}
    assert "deep.tif" in found["deep"].what and "alpha.tif" in found["alpha"].what
