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

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from model-input pixels back to original-image pixels (clipped)."""
        out = boxes_xyxy.astype(np.float32, copy=True)
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.gain
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.gain
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, self.orig_w)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, self.orig_h)
        return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8, raising a clear error if it is not an image."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise CalibrationError(f"cannot decode image {path}", "remove it or replace it with a valid JPEG/PNG")
    return img


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
