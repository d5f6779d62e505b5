"""Calibration image sources: one image, a folder of images, or a COCO json plus its image folder.

Images are listed up front (cheap) but read and letterboxed one at a time, so memory does not
grow with the number of images. :func:`check_images` decodes every image once before any model
work, so a broken file is reported at once (all of them, in one error) rather than when the
calibration pass reaches it; the images are decoded again when used (nothing decoded is kept).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeq.calib.preprocess import InputConvention, read_image
from edgeq.errors import CalibrationError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MIN_RECOMMENDED = 50
#: unreadable images named in a CalibrationError before the rest are only counted
LISTED_BAD = 5


@dataclass(frozen=True)
class CalibrationSet:
    """An ordered, deterministic list of calibration images and where they came from.

    ``files``: every file the source consists of (its json and all the images it lists, before
    ``count``), which an output must never overwrite.
    """

    paths: tuple[Path, ...]
    source: str
    files: tuple[Path, ...] = ()
    #: how each image becomes the model input (:data:`edgeq.calib.preprocess.PREPROCESSING`); the
    #: pipeline sets the head family's, so calibration sees what prediction will
    preprocessing: str = "letterbox"
    #: the model's channel order, pixel scale and letterbox pad placement (the head family's,
    #: set by the pipeline): the images are the artifact's input pixels
    input_convention: InputConvention = InputConvention()

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, imgsz: tuple[int, int]) -> Iterator[np.ndarray]:
        """Yield preprocessed (letterboxed, by default) uint8 HWC images, one at a time: RGB, or in
        the channel order of :attr:`input_convention` (whose pixel scale they carry, see
        :func:`edgeq.calib.preprocess.to_nchw_float`)."""
        for p in self.paths:
            yield self.input_convention.pixels(read_image(p), imgsz, self.preprocessing)[0]


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
            "put the images in images/ beside the json, or pass the image folder itself as --calib",
        )
    return paths


def calibration_set(path: str | Path, *, images_dir: str | Path | None = None, count: int | None = None) -> CalibrationSet:
    """Resolve ``--calib PATH``: one image file, an image folder, a COCO json, or a dataset folder
    holding ``images/`` (and optionally ``instances.json``). Takes the first ``count`` images in
    name order, so the same arguments always select the same images. Lists, never decodes (see
    :func:`check_images`).
    """
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration path not found: {path}", "give a folder of images or a COCO instances.json")
    single = path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    if single:
        paths = [path]
    elif path.is_file():
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
    files = tuple(paths) + ((path,) if path.is_file() and not single else ())
    if count is not None:
        if count <= 0:
            raise CalibrationError(f"--calib-count must be positive, got {count}")
        paths = paths[:count]
    # too few images, duplicates, colour space...: edgeq.calib.checks (the pipeline reports them)
    return CalibrationSet(paths=tuple(paths), source=str(path), files=files)


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (decoded exactly as calibration reads it), or None."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return e.strerror or type(e).__name__
    if size == 0:
        return "empty file"
    try:
        read_image(path)
    except CalibrationError:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            return e.strerror or type(e).__name__
        if head.startswith(b"\xff\xd8\xff"):
            return "corrupt JPEG data"
        if head.startswith(b"\x89PNG"):
            return "corrupt PNG data"
        return f"not an image format OpenCV decodes ({size} bytes starting {head[:4]!r})"
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


@contextlib.contextmanager
def _opencv_silent() -> Iterator[None]:
    import cv2

    try:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - builds without cv2.utils.logging
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def check_images(
    calib: CalibrationSet, *, skip_bad: bool = False, on_image: Callable[[], None] | None = None
) -> CalibrationSet:
    """Decode every image of ``calib`` once, before any model work (decoded pixels are not kept).

    Args:
        calib: the set to check.
        skip_bad: drop unreadable images (logged with a count) instead of failing.
        on_image: called after each image (a progress bar's update).

    Returns:
        ``calib``, or with ``skip_bad`` the set without its unreadable images.

    Raises:
        CalibrationError: some images are unreadable (all named, the first few with their reason,
            then a count), or with ``skip_bad`` every image is.
    """
    def check(p: Path) -> str | None:
        why = image_problem(p)
        if on_image is not None:
            on_image()
        return why

    workers = max(1, min(4, os.cpu_count() or 1, len(calib)))
    with _opencv_silent():  # its own log lines would repeat, less clearly, what the error says
        if workers == 1:
            problems = [check(p) for p in calib.paths]
        else:  # OpenCV decodes without the GIL
            with ThreadPoolExecutor(workers) as pool:
                problems = list(pool.map(check, calib.paths))
    bad = [(p, why) for p, why in zip(calib.paths, problems) if why is not None]
    if not bad:
        return calib
    listed = "; ".join(f"{p.name}: {why}" for p, why in bad[:LISTED_BAD])
    more = f"; and {len(bad) - LISTED_BAD} more" if len(bad) > LISTED_BAD else ""
    if skip_bad and len(bad) < len(calib):
        log.warning("skipped %d unreadable calibration image(s) of %d in %s (%s%s)",
                    len(bad), len(calib), calib.source, listed, more)
        drop = {p for p, _ in bad}
        return replace(calib, paths=tuple(p for p in calib.paths if p not in drop))
    everyone = len(bad) == len(calib)
    raise CalibrationError(
        f"{len(bad)} of {len(calib)} calibration images in {calib.source} cannot be read: {listed}{more}",
        "point --calib at a folder of valid images" if everyone
        else "remove or replace them, or pass --skip-bad-images to calibrate without them",
    )
