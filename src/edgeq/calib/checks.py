"""Cheap checks of a calibration set, before any model work: is it the kind of set INT8 ranges can
be trusted from?

A set of odd images converts without an error and gives an artifact that runs, but its ranges are
set by images unlike deployment frames (or by too few of them): confident scores end up capped
(see the collapse guard, :mod:`edgeq.quant.guard`), boxes clip. This looks at every image once,
as a small thumbnail, and says what is unusual about the set and what to do about it.

Each image is read once: the file's header tells what the decoder will convert (16-bit samples,
an alpha channel, CMYK) and the image's size; the pixels are decoded at reduced size (JPEG's DCT
scaling, ``cv2.IMREAD_REDUCED_COLOR_*``) into a 64x64 thumbnail, of which only a few numbers and a
16x16 grey thumbnail are kept (streaming: memory grows by ~300 bytes per image). Formats whose
header is not parsed here (BMP, WebP, TIFF) are decoded once with ``cv2.IMREAD_UNCHANGED``.

Unreadable files are skipped here (:func:`edgeq.calib.dataset.check_images` reports them).
"""
from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeq.calib.dataset import MIN_RECOMMENDED, CalibrationSet
from edgeq.calib.preprocess import jpeg_frame

#: A set with fewer images than this is warned about (``dataset.MIN_RECOMMENDED``).
MIN_IMAGES = MIN_RECOMMENDED
#: Side of the thumbnail each image is judged on.
THUMB = 64
#: Two images are near-duplicates when their 64-bit difference hashes differ in at most this many
#: bits ...
DUP_HASH_BITS = 6
#: ... and their 16x16 grey thumbnails by at most this mean absolute difference (grey levels).
DUP_MEAN_ABS = 6.0
#: Duplicates warn once they make up this share of the set (images beyond the first of a group).
DUP_SHARE = 0.05
#: A thumbnail whose channels differ by at most this (grey levels, anywhere) is a grey image.
GRAY_CHANNEL_DIFF = 4
#: Grey images warn above this share of the set (COCO itself holds ~1-2 % grey photos).
GRAY_SHARE = 0.05
#: An image whose long side is under ``model input / TINY_RATIO`` is upscaled past recognition.
TINY_RATIO = 8
#: An image whose long side is over ``model input * HUGE_RATIO`` only costs decoding time (info).
HUGE_RATIO = 4
#: A thumbnail whose grey standard deviation is under this is a blank (nearly constant) image.
FLAT_STD = 4.0
#: The set's mean grey level outside this range: nearly all images are very dark or washed out.
BRIGHTNESS_RANGE = (40.0, 215.0)
#: The set's median per-image grey standard deviation under this: a low-contrast set.
LOW_CONTRAST_STD = 15.0
#: Example files named per warning.
EXAMPLES = 3
#: Files and images larger than this are skipped (calibration's reader refuses them and says so).
MAX_BYTES, MAX_PIXELS = 256 << 20, 100_000_000


@dataclass(frozen=True)
class CalibWarning:
    """One thing about a calibration set that makes its INT8 ranges less trustworthy.

    Attributes:
        what: what was found, with counts and example files.
        fix: what to do about it.
        code: a stable key (``few_images``, ``duplicates``, ``grayscale``, ``deep``, ``alpha``,
            ``cmyk``, ``tiny``, ``huge``, ``flat``, ``dark``, ``bright``, ``low_contrast``).
        level: ``warning``, or ``info`` for what only costs time (``huge``).
        files: the example files named in ``what``.
    """

    what: str
    fix: str
    code: str = ""
    level: str = "warning"
    files: tuple[Path, ...] = ()

    @property
    def log_level(self) -> int:
        """The :mod:`logging` level to report it at."""
        return logging.INFO if self.level == "info" else logging.WARNING

    def __str__(self) -> str:
        return f"{self.what}. Fix: {self.fix}"


@dataclass
class _Scan:
    """What is kept of one image."""

    path: Path
    width: int
    height: int
    stored: tuple[str, ...]  # what the decoder converts: "16-bit", "alpha", "CMYK"
    gray_file: bool  # stored with one colour channel
    gray: bool  # grey as decoded (one channel, or all channels equal)
    mean: float
    std: float
    dhash: int
    small: np.ndarray  # 16x16 uint8 grey thumbnail


def check_calibration_set(
    calib_set: CalibrationSet | Iterable[str | Path],
    imgsz: int | Sequence[int],
    *,
    workers: int | None = None,
) -> list[CalibWarning]:
    """Look at every calibration image once (as a thumbnail) and say what is wrong with the set.

    Args:
        calib_set: the calibration set (:func:`edgeq.calib.dataset.calibration_set`), or image paths.
        imgsz: the model input, ``(height, width)`` or one side.
        workers: decoding threads (default: up to 4; OpenCV decodes without the GIL).

    Returns:
        Warnings (``level="warning"``) first, then notes (``level="info"``); empty for a sound set.

    Example::

        from edgeq.calib.checks import check_calibration_set

        warnings = check_calibration_set(calib_set, imgsz)
        for w in warnings:
            log.log(w.log_level, "calibration set: %s. Fix: %s", w.what, w.fix)
    """
    paths = tuple(Path(p) for p in (calib_set.paths if isinstance(calib_set, CalibrationSet) else calib_set))
    side = max(imgsz) if isinstance(imgsz, Sequence) else int(imgsz)
    workers = workers or max(1, min(4, os.cpu_count() or 1, len(paths)))
    if workers == 1 or len(paths) < 8:
        scans = [_scan(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            scans = list(pool.map(_scan, paths, chunksize=8))
    seen = [s for s in scans if s is not None]
    found = [*_few(len(paths)), *_duplicates(seen), *_colour(seen), *_stored(seen), *_sizes(seen, side),
             *_exposure(seen)]
    return sorted(found, key=lambda w: w.level == "info")


# -- reading ------------------------------------------------------------------------------------------
def _scan(path: Path) -> _Scan | None:
    """One image's numbers, or None when it cannot be read (or is too large to be)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        data = np.fromfile(str(path), dtype=np.uint8)
        return _scan_bytes(path, data) if data.size else None
    except (OSError, cv2.error):
        return None


def _scan_bytes(path: Path, data: np.ndarray) -> _Scan | None:
    head = _png_header(data) or _jpeg_header(data)
    if head is not None:
        (width, height), stored, gray_file = head
        if width * height > MAX_PIXELS:
            return None
        bgr = cv2.imdecode(data, _reduced_flag(min(width, height)))
    else:  # BMP, WebP, TIFF: one full decode tells everything
        raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if raw is None:
            return None
        height, width = raw.shape[:2]
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        stored = (("16-bit",) if raw.dtype.itemsize > 1 else ()) + (("alpha",) if channels in (2, 4) else ())
        gray_file = channels <= 2
        bgr = _to_bgr8(raw)
    if bgr is None:
        return None
    thumb = cv2.resize(bgr, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY)
    t = thumb.astype(np.int16)
    channel_diff = max(int(np.abs(t[..., 0] - t[..., 1]).max()), int(np.abs(t[..., 1] - t[..., 2]).max()))
    return _Scan(path, width, height, stored, gray_file, gray_file or channel_diff <= GRAY_CHANNEL_DIFF,
                 float(grey.mean()), float(grey.std()), _dhash(grey),
                 cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA))


def _reduced_flag(short_side: int) -> int:
    """Decode at 1/8, 1/4 or 1/2 size while the short side stays >= 48 px (JPEG scales in the DCT)."""
    for k, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if short_side // k >= 48:
            return flag
    return cv2.IMREAD_COLOR


def _to_bgr8(raw: np.ndarray) -> np.ndarray:
    if raw.dtype != np.uint8:
        raw = (raw.astype(np.float32) * (255.0 / np.iinfo(raw.dtype).max) if raw.dtype.kind in "iu"
               else np.clip(raw, 0, 1) * 255.0).astype(np.uint8)
    if raw.ndim == 2 or raw.shape[2] == 1:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    return {2: lambda r: cv2.cvtColor(r[..., 0], cv2.COLOR_GRAY2BGR), 3: lambda r: r,
            4: lambda r: r[..., :3]}[raw.shape[2]](raw)


def _png_header(data: np.ndarray) -> tuple[tuple[int, int], tuple[str, ...], bool] | None:
    """(size, conversions, one colour channel) from a PNG's IHDR (and tRNS), or None."""
    b = data[:33].tobytes()
    if len(b) < 33 or not b.startswith(b"\x89PNG\r\n\x1a\n") or b[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", b[16:26])
    alpha = colour in (4, 6) or _png_has_trns(data)
    stored = (("16-bit",) if depth == 16 else ()) + (("alpha",) if alpha else ())
    return (width, height), stored, colour in (0, 4)


def _png_has_trns(data: np.ndarray) -> bool:
    """A tRNS chunk (transparency of a palette or colour key) before the image data."""
    pos, n = 8, data.size
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8].tobytes())
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def _jpeg_header(data: np.ndarray) -> tuple[tuple[int, int], tuple[str, ...], bool] | None:
    """(size, conversions, one colour channel) from a JPEG's start-of-frame header, or None."""
    frame = jpeg_frame(data)
    if frame is None:
        return None
    stored = (("12-bit",) if frame.precision > 8 else ()) + (("CMYK",) if frame.components == 4 else ())
    return (frame.width, frame.height), stored, frame.components == 1


def _dhash(grey: np.ndarray) -> int:
    """64-bit difference hash: is each of 9x8 cells brighter than its right neighbour."""
    cells = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (cells[:, 1:] > cells[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


# -- judging ------------------------------------------------------------------------------------------
def _files(scans: Sequence[_Scan]) -> tuple[Path, ...]:
    return tuple(s.path for s in scans[:EXAMPLES])


def _found(label: str, hit: Sequence[_Scan], n: int, detail: str = "") -> str:
    """``label: k of n images (x %; e.g. a, b, c; detail)``."""
    names = ", ".join(s.path.name for s in hit[:EXAMPLES]) + (", ..." if len(hit) > EXAMPLES else "")
    return f"{label}: {len(hit)} of {n} images ({len(hit) / n:.0%}; e.g. {names}{'; ' + detail if detail else ''})"


_REPRESENTATIVE = ("calibrate on >= 100 representative images: frames like the deployment camera's "
                   "(colour, 8-bit), letterboxed like deployment, e.g. a sample of the training or validation set")


def _few(n: int) -> list[CalibWarning]:
    if n >= MIN_IMAGES:
        return []
    return [CalibWarning(
        f"only {n} calibration image{'s' if n != 1 else ''} (at least {MIN_IMAGES} recommended): INT8 ranges are set by "
        "each tensor's rare extremes (the clipped tails, the outputs' maxima), which so few images sample poorly, "
        "so ranges come out too narrow (confident scores capped, large boxes clipped) and change with every image added",
        _REPRESENTATIVE, "few_images")]


def _duplicates(scans: Sequence[_Scan]) -> list[CalibWarning]:
    """Groups of near-identical images: difference hashes within a few bits, confirmed on 16x16 thumbnails."""
    n = len(scans)
    if n < 2:
        return []
    hashes = np.array([s.dhash for s in scans], dtype=np.uint64)
    small = np.stack([s.small for s in scans]).reshape(n, -1).astype(np.int16)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, 1024):  # 1024 x n hash distances at a time
        bits = _popcount(hashes[start:start + 1024, None] ^ hashes[None, :])
        i, j = np.nonzero(bits <= DUP_HASH_BITS)
        i += start
        for a, b in zip(i[j > i].tolist(), j[j > i].tolist()):
            if root(a) != root(b) and float(np.abs(small[a] - small[b]).mean()) <= DUP_MEAN_ABS:
                parent[root(b)] = root(a)
    groups: dict[int, list[_Scan]] = {}
    for k in range(n):
        groups.setdefault(root(k), []).append(scans[k])
    groups_ = [g for g in groups.values() if len(g) > 1]
    redundant = sum(len(g) - 1 for g in groups_)
    if not redundant or redundant / n < DUP_SHARE:
        return []
    groups_.sort(key=len, reverse=True)
    shown = "; ".join(" = ".join(s.path.name for s in g[:5]) + (f" (+{len(g) - 5} more)" if len(g) > 5 else "")
                      for g in groups_[:EXAMPLES])
    more = f"; and {len(groups_) - EXAMPLES} more groups" if len(groups_) > EXAMPLES else ""
    return [CalibWarning(
        f"near-duplicates: {redundant} of {n} images ({redundant / n:.0%}) repeat another image of the set "
        f"({len(groups_)} group{'s' if len(groups_) > 1 else ''}: {shown}{more}); they weigh the ranges toward "
        f"a few scenes and leave {n - redundant} distinct images",
        "replace the repeats with different scenes (sampling video: take frames seconds apart)",
        "duplicates", files=tuple(s.path for g in groups_[:EXAMPLES] for s in g[:5]))]


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def _colour(scans: Sequence[_Scan]) -> list[CalibWarning]:
    grey = [s for s in scans if s.gray and s.std >= FLAT_STD]  # blank frames are reported as such
    if not grey or len(grey) / len(scans) <= GRAY_SHARE:
        return []
    return [CalibWarning(
        _found("greyscale images", grey, len(scans)) + ": the model sees R = G = B, so the ranges miss the colour "
        "contrast of deployment frames",
        "if the deployment camera gives colour, calibrate on colour images (a monochrome camera: ignore this)",
        "grayscale", files=_files(grey))]


_STORED = {
    "16-bit": ("deep", "16-bit images", "calibration reads them as 8-bit (the top 8 bits of each sample)",
               "save them as 8-bit images with the exposure the deployment camera delivers"),
    "12-bit": ("deep", "12-bit JPEGs", "calibration reads them as 8-bit",
               "save them as 8-bit images with the exposure the deployment camera delivers"),
    "alpha": ("alpha", "images with an alpha channel",
              ("calibration drops the alpha: transparent areas show whatever colour they hold (often black)"),
              "flatten them onto a background, or use the camera's own RGB frames"),
    "CMYK": ("cmyk", "CMYK JPEGs", "the decoder converts them to RGB (colours may come out shifted or inverted)",
             "convert them to RGB (sRGB) JPEG/PNG, or use the camera's own RGB frames"),
}


def _stored(scans: Sequence[_Scan]) -> list[CalibWarning]:
    found = []
    for kind, (code, label, why, fix) in _STORED.items():
        hit = [s for s in scans if kind in s.stored]
        if hit:
            found.append(CalibWarning(f"{_found(label, hit, len(scans))}: {why}", fix, code, files=_files(hit)))
    return found


def _sizes(scans: Sequence[_Scan], side: int) -> list[CalibWarning]:
    found = []
    tiny = sorted((s for s in scans if max(s.width, s.height) * TINY_RATIO < side), key=lambda s: max(s.width, s.height))
    if tiny:
        found.append(CalibWarning(
            _found(f"tiny images (long side under {side / TINY_RATIO:.0f} px)", tiny, len(scans),
                   f"smallest {tiny[0].width}x{tiny[0].height}") +
            f": letterboxed to {side} px they are upscaled more than {TINY_RATIO}x into blur or flat colour, "
            "nothing like a camera frame",
            "remove them, or replace them with full-resolution frames", "tiny", files=_files(tiny)))
    huge = sorted((s for s in scans if max(s.width, s.height) > HUGE_RATIO * side), key=lambda s: -s.width * s.height)
    if huge:
        found.append(CalibWarning(
            _found(f"large images (long side over {HUGE_RATIO}x the {side} px input)", huge, len(scans),
                   f"largest {huge[0].width}x{huge[0].height}") + ": fine, but decoding them dominates calibration time",
            f"downscale them ahead of time (long side ~{side} px) to calibrate faster", "huge", "info",
            files=_files(huge)))
    return found


def _exposure(scans: Sequence[_Scan]) -> list[CalibWarning]:
    if not scans:
        return []
    n = len(scans)
    found = []
    flat = [s for s in scans if s.std < FLAT_STD]
    if flat:
        found.append(CalibWarning(
            _found("blank images (nearly one colour)", flat, n) + ": they add nothing to the ranges and dilute the set",
            "remove them", "flat", files=_files(flat)))
    brightness = float(np.mean([s.mean for s in scans]))
    contrast = float(np.median([s.std for s in scans]))
    lo, hi = BRIGHTNESS_RANGE
    if brightness < lo or brightness > hi:
        code, word = ("dark", "very dark") if brightness < lo else ("bright", "washed out")
        extreme = sorted(scans, key=lambda s: s.mean, reverse=brightness > hi)
        names = ", ".join(s.path.name for s in extreme[:EXAMPLES])
        found.append(CalibWarning(
            f"the set is {word}: its mean grey level is {brightness:.0f} of 255 over {n} images (e.g. {names}), "
            "so the ranges cover a sliver of what a normally exposed frame gives",
            "check the images decode as intended and are exposed like deployment frames "
            "(if the deployment scene really is this dark or bright, ignore this)", code, files=_files(extreme)))
    if contrast < LOW_CONTRAST_STD and len(flat) < n:
        dull = sorted(scans, key=lambda s: s.std)
        names = ", ".join(s.path.name for s in dull[:EXAMPLES])
        found.append(CalibWarning(
            f"the set has low contrast: the median image's grey levels vary by {contrast:.1f} of 255 (std; "
            f"e.g. {names}), so the ranges come out narrower than real frames need",
            "calibrate on normally exposed frames like the deployment camera's", "low_contrast", files=_files(dull)))
    return found


__all__ = ["CalibWarning", "check_calibration_set"]
