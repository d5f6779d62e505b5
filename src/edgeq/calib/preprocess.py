"""Image preprocessing shared by calibration, inference and validation.

Ultralytics' letterbox, exactly: scale the long side to the model size (never a different
ratio per axis), linear resize, pad with 114 split evenly (centred) with the same rounding
as ``ultralytics.data.augment.LetterBox``, RGB channel order.

Models trained another way declare it as an :class:`InputConvention` (a head family's
``input_convention`` attribute; in an artifact the ``edgeq.input_convention`` extension field, see
:meth:`InputConvention.to_json`): the channel order the model takes, the factor from 0..255 pixels
to its input values, and where the letterbox padding goes (``center`` as Ultralytics, or
``bottom_right`` as Megvii's YOLOX ``preproc``: the resized image at the top-left corner).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
        crop = np.ascontiguousarray(plane[max(top, 0):top + h, max(left, 0):left + w])
        if crop.dtype.kind in "iub" and crop.dtype not in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
            # cv2.resize takes no int64 (argmax's dtype) or bool: class maps go through int32
            out = cv2.resize(crop.astype(np.int32), (self.orig_w, self.orig_h), interpolation=interpolation)
            return out.astype(crop.dtype)
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
    frame = jpeg_frame(head)
    return (frame.width, frame.height) if frame is not None else None


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


@dataclass(frozen=True)
class JpegFrame:
    """A JPEG's start-of-frame header: size, bits per sample and colour components."""

    width: int
    height: int
    precision: int
    components: int


def jpeg_frame(data: bytes | np.ndarray) -> JpegFrame | None:
    """The start-of-frame header of a JPEG, read by walking its markers (None: not a JPEG, or the
    frame header is not within ``data``)."""
    data = bytes(data[:]) if isinstance(data, np.ndarray) else data
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in JPEG_SOF:
            if i + 10 > n:
                return None
            height, width = struct.unpack(">2H", data[i + 5 : i + 9])
            return JpegFrame(width, height, data[i + 4], data[i + 9])
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        i += 2 + length
    return None


#: Letterbox pad placements: ``center`` (Ultralytics) and ``bottom_right`` (image at the top-left corner).
PADS = ("center", "bottom_right")
#: Channel orders a model may take.
CHANNELS = ("rgb", "bgr")
#: The default pixel scale: the model takes ``pixels / 255``.
UNIT_SCALE = 1 / 255


def letterbox(image_bgr: np.ndarray, size: tuple[int, int], pad: str = "center") -> tuple[np.ndarray, Letterbox]:
    """Letterbox a BGR image to ``size`` = (height, width); returns RGB uint8 HWC and the mapping.

    ``pad``: ``center`` splits the padding evenly (Ultralytics' rounding); ``bottom_right`` puts
    the resized image at the top-left corner and all padding below and to the right, with the
    resized size truncated as YOLOX's ``preproc`` does (``int(w0 * gain)``).
    """
    if pad not in PADS:
        raise ValueError(f"letterbox pad {pad!r} is not one of {', '.join(PADS)}")
    h0, w0 = image_bgr.shape[:2]
    new_h, new_w = size
    gain = min(new_h / h0, new_w / w0)
    if pad == "bottom_right":
        unpad_w, unpad_h = max(1, int(w0 * gain)), max(1, int(h0 * gain))
    else:
        unpad_w, unpad_h = int(round(w0 * gain)), int(round(h0 * gain))
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w0, h0) != (unpad_w, unpad_h):
        image_bgr = cv2.resize(image_bgr, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    if pad == "bottom_right":
        top, bottom, left, right = 0, new_h - unpad_h, 0, new_w - unpad_w
    else:
        top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
        left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(
        image_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    return rgb, Letterbox(gain=gain, pad_x=float(left), pad_y=float(top), orig_h=h0, orig_w=w0)



def center_crop(image_bgr: np.ndarray, size: tuple[int, int], pad: str = "center") -> tuple[np.ndarray, Letterbox]:
    """Ultralytics' ``classify_transforms``: scale the short side to the model size (linear), crop
    the centre; returns RGB uint8 HWC and the mapping (negative pads: the crop offset). ``pad`` is
    ignored (nothing is padded)."""
    h0, w0 = image_bgr.shape[:2]
    new_h, new_w = size
    gain = max(new_h / h0, new_w / w0)
    rw, rh = max(new_w, int(round(w0 * gain))), max(new_h, int(round(h0 * gain)))
    if (rw, rh) != (w0, h0):
        image_bgr = cv2.resize(image_bgr, (rw, rh), interpolation=cv2.INTER_LINEAR)
    top, left = int(round((rh - new_h) / 2)), int(round((rw - new_w) / 2))
    crop = np.ascontiguousarray(image_bgr[top:top + new_h, left:left + new_w])
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return rgb, Letterbox(gain=gain, pad_x=float(-left), pad_y=float(-top), orig_h=h0, orig_w=w0)


#: How an image becomes a model input (``validation.preprocessing``): ``letterbox`` (detectors),
#: ``center_crop`` (classifiers).
PREPROCESSING = {"letterbox": letterbox, "center_crop": center_crop}


def preprocess_image(image_bgr: np.ndarray, size: tuple[int, int], method: str = "letterbox",
                     pad: str = "center") -> tuple[np.ndarray, Letterbox]:
    """``image_bgr`` as an RGB uint8 HWC model input by ``method`` (a key of :data:`PREPROCESSING`)
    and the mapping back; ``pad``: where a letterbox puts its padding (see :func:`letterbox`)."""
    fn = PREPROCESSING.get(method)
    if fn is None:
        raise CalibrationError(f"unknown preprocessing {method!r}", f"use one of {', '.join(PREPROCESSING)}")
    return fn(image_bgr, size, pad)


@dataclass(frozen=True)
class InputConvention:
    """What a model's input values are, beyond the resize: where a letterbox puts its ``pad``,
    the ``channels`` order, and ``pixel_scale`` (model input = 0..255 pixels * ``pixel_scale``).

    The default is Ultralytics' convention (centred pad, RGB, ``/255``); Megvii's YOLOX takes BGR
    0..255 padded at the bottom/right (``InputConvention("bottom_right", "bgr", 1.0)``).
    """

    pad: str = "center"
    channels: str = "rgb"
    pixel_scale: float = UNIT_SCALE

    #: version of the ``edgeq.input_convention`` JSON this class writes and reads
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.pad not in PADS:
            raise ValueError(f"input convention pad {self.pad!r} is not one of {', '.join(PADS)}")
        if self.channels not in CHANNELS:
            raise ValueError(f"input convention channels {self.channels!r} is not one of {', '.join(CHANNELS)}")
        if not (isinstance(self.pixel_scale, (int, float)) and 0 < self.pixel_scale <= 1):
            raise ValueError(f"input convention pixel_scale {self.pixel_scale!r} is not in (0, 1]")

    @property
    def unit_scale(self) -> bool:
        """The model takes ``pixels / 255`` (the default)."""
        return self.pixel_scale == UNIT_SCALE

    def pixels(self, image_bgr: np.ndarray, size: tuple[int, int], method: str = "letterbox") -> tuple[np.ndarray, Letterbox]:
        """uint8 HWC model-input pixels (``method``: see :func:`preprocess_image`) in the model's
        channel order, and the mapping back.

        For the default convention this is exactly ``preprocess_image`` (RGB). With a pixel scale
        other than 1/255 the array is a :class:`Pixels` that carries it, so :func:`to_nchw_float`
        makes the float model's input from it.
        """
        pix, lb = preprocess_image(image_bgr, size, method, self.pad)
        if self.channels == "bgr":
            pix = np.ascontiguousarray(pix[..., ::-1])
        if not self.unit_scale:
            pix = pix.view(Pixels)
            pix.pixel_scale = float(self.pixel_scale)
        return pix, lb

    def to_json(self) -> dict[str, Any]:
        """The ``edgeq.input_convention`` extension field, version 1 (EdgeFirst has no field for the
        pad placement or a 0..255 input)::

            {"version": 1, "pad": "center" | "bottom_right", "pad_value": 114,
             "channels": "rgb" | "bgr", "pixel_scale": 0.00392156862745098 | 1.0}

        ``channels`` repeats ``input.cameraadaptor``; ``pixel_scale`` is what a float input takes
        (an integer input's own quantization already holds it: uint8 scale 1/255 or 1).
        """
        return {"version": self.VERSION, "pad": self.pad, "pad_value": PAD_VALUE,
                "channels": self.channels, "pixel_scale": float(self.pixel_scale)}

    @classmethod
    def from_json(cls, d: Any, channels: str = "rgb") -> "InputConvention":
        """Read ``edgeq.input_convention``; absent, another version or malformed: the defaults with
        ``channels`` (``input.cameraadaptor``)."""
        channels = channels.lower() if isinstance(channels, str) and channels.lower() in CHANNELS else "rgb"
        if not isinstance(d, dict) or d.get("version") != cls.VERSION:
            return cls(channels=channels)
        try:
            return cls(pad=d.get("pad", "center"), channels=d.get("channels", channels),
                       pixel_scale=float(d.get("pixel_scale", UNIT_SCALE)))
        except (TypeError, ValueError):
            return cls(channels=channels)


class Pixels(np.ndarray):
    """uint8 HWC pixels that carry the ``pixel_scale`` of the model they were made for."""

    pixel_scale: float

    def __array_finalize__(self, obj: Any) -> None:
        self.pixel_scale = getattr(obj, "pixel_scale", UNIT_SCALE)


def to_nchw_float(rgb_hwc: np.ndarray) -> np.ndarray:
    """uint8 HWC pixels -> the float ONNX model's float32 NCHW input: ``pixels / 255``, or
    ``pixels * pixel_scale`` for :class:`Pixels` made by :meth:`InputConvention.pixels`."""
    scale = getattr(rgb_hwc, "pixel_scale", UNIT_SCALE)
    return (np.asarray(rgb_hwc).transpose(2, 0, 1)[None].astype(np.float32)) * np.float32(scale)
