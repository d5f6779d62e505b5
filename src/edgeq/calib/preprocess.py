"""Image preprocessing shared by calibration, inference and validation.

Ultralytics' letterbox, exactly: scale the long side to the model size (never a different
ratio per axis), linear resize, pad with 114 split evenly (centred) with the same rounding
as ``ultralytics.data.augment.LetterBox``, RGB channel order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeq.errors import CalibrationError

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the model input: ``model = orig * gain + (pad_x, pad_y)``."""

    gain: float
    pad_x: float
    pad_y: float
    orig_h: int
    orig_w: int

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` points (x, y) from model-input pixels to original-image pixels (unclipped)."""
        out = np.asarray(xy, np.float32).copy()
        out[..., 0] = (out[..., 0] - self.pad_x) / self.gain
        out[..., 1] = (out[..., 1] - self.pad_y) / self.gain
        return out

    def map_to_original(self, plane: np.ndarray, interpolation: int = 0) -> np.ndarray:
        """A (H, W) model-input plane (class map, score map) cropped of its padding and resized to
        the original image (nearest neighbour by default: class indices stay class indices)."""
        import cv2

        top, left = int(round(self.pad_y)), int(round(self.pad_x))
        h, w = int(round(self.orig_h * self.gain)), int(round(self.orig_w * self.gain))
        crop = np.ascontiguousarray(plane[top:top + h, left:left + w])
        return cv2.resize(crop, (self.orig_w, self.orig_h), interpolation=interpolation)

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from model-input pixels back to original-image pixels (clipped)."""
        out = boxes_xyxy.astype(np.float32, copy=True)
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.gain
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.gain
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, self.orig_w)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, self.orig_h)
        return out


#: Largest image file read (a 100 MP PNG is ~100-300 MB; camera JPEGs are a few MB).
MAX_IMAGE_BYTES = 256 << 20
#: Most pixels an image may have (10000 x 10000): decoded BGR at this size is 300 MB.
MAX_IMAGE_PIXELS = 100_000_000


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8, raising a clear error if it is not an image.

    Gray, RGBA and 16-bit images are converted by OpenCV (``IMREAD_COLOR``). Files above
    ``MAX_IMAGE_BYTES`` and images above ``MAX_IMAGE_PIXELS`` are refused; for PNG, JPEG, GIF,
    BMP, WebP, TIFF and PNM the size is read from the header, before anything is decoded (other
    formats are checked after decoding), and a PNG whose chunks claim more bytes than the file
    holds is refused before OpenCV allocates for them. A missing or unreadable file raises
    ``OSError``, as before.
    """
    size = Path(path).stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise CalibrationError(
            f"image {path} is {size / 2**20:.0f} MiB, more than the {MAX_IMAGE_BYTES >> 20} MiB edgeq reads",
            "downscale it or leave it out",
        )
    data = np.fromfile(str(path), dtype=np.uint8)
    dims = _header_size(data[:65536].tobytes())
    if dims is not None:
        _check_pixels(path, *dims)
    if data[:8].tobytes() == _PNG and not _png_chunks_fit(data):
        # OpenCV trusts PNG chunk lengths: a 500-byte file declaring a 2 GiB chunk took 4 GB and 10 s
        raise CalibrationError(f"cannot decode image {path}: a PNG chunk runs past the end of the file", "remove it or replace it with a valid JPEG/PNG")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:
        img = None
    if img is None:
        raise CalibrationError(f"cannot decode image {path}", "remove it or replace it with a valid JPEG/PNG")
    _check_pixels(path, img.shape[1], img.shape[0])
    return img


def _check_pixels(path: str | Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise CalibrationError(
            f"image {path} is {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS // 1_000_000} MP edgeq reads",
            "downscale it or leave it out",
        )


_PNG = b"\x89PNG\r\n\x1a\n"


def _png_chunks_fit(data: np.ndarray) -> bool:
    """Whether every PNG chunk up to IEND (length, type, data, CRC) lies inside the file."""
    buf = memoryview(data)
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(buf[i : i + 4], "big")
        if length > 0x7FFFFFFF or i + 12 + length > n:
            return False
        if bytes(buf[i + 4 : i + 8]) == b"IEND":
            return True
        i += 12 + length
    return True  # no IEND: let the decoder say what is missing


def _header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF, BMP, WebP, TIFF or PNM header; None for anything else."""
    import re
    import struct

    if head[:4] in (b"II*\0", b"MM\0*") and len(head) >= 8:  # TIFF: ImageWidth / ImageLength of the first IFD
        end = "<" if head[:2] == b"II" else ">"
        (ifd,) = struct.unpack(end + "I", head[4:8])
        if ifd + 2 > len(head):
            return None
        (count,) = struct.unpack(end + "H", head[ifd : ifd + 2])
        dims: dict[int, int] = {}
        for k in range(min(count, (len(head) - ifd - 2) // 12)):
            tag, typ, _, value = struct.unpack(end + "HHI4s", head[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
            if tag in (256, 257):
                dims[tag] = struct.unpack(end + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4])[0]
        return (dims[256], dims[257]) if len(dims) == 2 else None
    pnm = re.match(rb"P[1-6](?:\s|#[^\n]*\n)+(\d{1,10})(?:\s|#[^\n]*\n)+(\d{1,10})", head)
    if pnm:
        return int(pnm.group(1)), int(pnm.group(2))
    if head[:8] == _PNG and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">2I", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<2H", head[6:10])
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<2i", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if kind == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            w, h = struct.unpack("<2H", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if head[:2] == b"\xff\xd8":  # JPEG: walk the markers up to a start-of-frame
        i = 2
        while i + 9 <= len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # no length
                i += 2
                continue
            length = int.from_bytes(head[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">2H", head[i + 5 : i + 9])
                return w, h
            if length < 2:
                return None
            i += 2 + length
    return None


def letterbox(image_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Letterbox a BGR image to ``size`` = (height, width); returns RGB uint8 HWC and the mapping."""
    h0, w0 = image_bgr.shape[:2]
    new_h, new_w = size
    gain = min(new_h / h0, new_w / w0)
    unpad_w, unpad_h = int(round(w0 * gain)), int(round(h0 * gain))
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w0, h0) != (unpad_w, unpad_h):
        image_bgr = cv2.resize(image_bgr, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(
        image_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    return rgb, Letterbox(gain=gain, pad_x=float(left), pad_y=float(top), orig_h=h0, orig_w=w0)


def to_nchw_float(rgb_hwc: np.ndarray) -> np.ndarray:
    """RGB uint8 HWC -> float32 NCHW in [0, 1], the float ONNX model's input."""
    return (rgb_hwc.transpose(2, 0, 1)[None].astype(np.float32)) * np.float32(1 / 255)
