"""Render detections onto a BGR image: translucent masks, boxes, and "label score" tags."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from edgeq.runtime.types import Detections

MASK_ALPHA = 0.45


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per class (golden-ratio hue walk)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image_bgr: np.ndarray, dets: Detections, *, line_width: int | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with ``dets`` drawn on it (masks first, then boxes and labels)."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    lw = line_width or max(1, round((h + w) / 600))
    if dets.masks is not None and len(dets):
        _blend_masks(out, dets)
    names = dets.names
    for k in range(len(dets)):
        color = class_color(int(dets.class_ids[k]))
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[k])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        _label(out, f"{names[k]} {float(dets.scores[k]):.2f}", (x1, y1), color, lw)
    return out


def _blend_masks(out: np.ndarray, dets: Detections) -> None:
    """Alpha-blend every mask in its class colour (lowest score first, so the best is on top)."""
    assert dets.masks is not None
    for k in range(len(dets) - 1, -1, -1):
        m = dets.masks[k]
        if not m.any():
            continue
        color = np.asarray(class_color(int(dets.class_ids[k])), np.float32)
        region = out[m].astype(np.float32)
        out[m] = (region * (1 - MASK_ALPHA) + color * MASK_ALPHA).astype(np.uint8)


def _label(out: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int], lw: int) -> None:
    """A filled tag above the box corner (inside the image when the box touches the top)."""
    scale = max(0.4, lw / 3)
    thick = max(1, lw - 1)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = corner
    top = y - th - base - 2 if y - th - base - 2 >= 0 else y
    cv2.rectangle(out, (x, top), (x + tw + 2, top + th + base + 2), color, -1)
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(out, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thick, cv2.LINE_AA)
