"""Calibration image sources: a folder of images, or a COCO json plus its image folder.

Images are listed up front (cheap) but read and letterboxed one at a time, so memory does not
grow with the number of images.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.calib.preprocess import letterbox, read_image
from edgeq.errors import CalibrationError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MIN_RECOMMENDED = 50


@dataclass(frozen=True)
class CalibrationSet:
    """An ordered, deterministic list of calibration images and where they came from."""

    paths: tuple[Path, ...]
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, imgsz: tuple[int, int]) -> Iterator[np.ndarray]:
        """Yield letterboxed RGB uint8 HWC images, one at a time."""
        for p in self.paths:
            yield letterbox(read_image(p), imgsz)[0]


def _from_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _from_coco(json_path: Path, images_dir: Path | None) -> list[Path]:
    try:
        data = json.loads(json_path.read_text())
        files = [img["file_name"] for img in data["images"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CalibrationError(f"{json_path} is not a COCO instances json ({e})") from e
    root = images_dir or (json_path.parent / "images")
    paths = [root / Path(f).name for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CalibrationError(
            f"{len(missing)} of {len(paths)} images listed in {json_path} are missing from {root} (first: {missing[0].name})",
            "pass the image folder with --calib-images DIR",
        )
    return paths


def calibration_set(path: str | Path, *, images_dir: str | Path | None = None, count: int | None = None) -> CalibrationSet:
    """Resolve ``--calib PATH``: an image folder, a COCO json, or a dataset folder holding
    ``images/`` (and optionally ``instances.json``). Takes the first ``count`` images in name
    order, so the same arguments always select the same images.
    """
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration path not found: {path}", "give a folder of images or a COCO instances.json")
    if path.is_file():
        paths = _from_coco(path, Path(images_dir) if images_dir else None)
    elif (path / "images").is_dir():
        paths = _from_folder(path / "images")
    else:
        paths = _from_folder(path)
    if not paths:
        raise CalibrationError(
            f"no images found in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            "point --calib at a folder with a few hundred representative images",
        )
    if count is not None:
        if count <= 0:
            raise CalibrationError(f"--calib-count must be positive, got {count}")
        paths = paths[:count]
    if len(paths) < MIN_RECOMMENDED:
        log.warning(
            "only %d calibration images in %s; at least %d are recommended for stable INT8 ranges",
            len(paths), path, MIN_RECOMMENDED,
        )
    return CalibrationSet(paths=tuple(paths), source=str(path))
