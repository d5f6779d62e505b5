"""Render detections onto a BGR image: translucent masks, boxes (rotated ones as polygons), "label score" tags, keypoints."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from edgeq.decode.rotated import rbox_corners
from edgeq.runtime.types import Detections

MASK_ALPHA = 0.45
#: keypoints drawn when their visibility is above this (Ultralytics' plotting threshold)
KPT_VISIBLE = 0.5
#: keypoints of a COCO person
COCO_KEYPOINTS = 17
#: COCO person skeleton: limbs as pairs of 0-based keypoint indices (17 keypoints)
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per class (golden-ratio hue walk)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image_bgr: np.ndarray, dets: Detections, *, line_width: int | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with ``dets`` drawn on it (masks first, then boxes and labels, then
    keypoints and, for 17-keypoint models, the COCO skeleton)."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    lw = line_width or max(1, round((h + w) / 600))
    if dets.class_map is not None:  # semantic segmentation: every pixel in its class colour
        _blend_class_map(out, dets.class_map)
    if dets.probs is not None:  # classifier: the top-5 "label probability" tags, top left
        return _draw_top_classes(out, dets, lw)
    if dets.masks is not None and len(dets):
        _blend_masks(out, dets)
    names = dets.names
    for k in range(len(dets)):
        color = class_color(int(dets.class_ids[k]))
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.boxes[k])
        if dets.rotated is not None:  # oriented boxes: the polygon; the tag sits on its upright hull
            cv2.polylines(out, [_rotated_corners(dets.rotated[k])], True, color, lw, cv2.LINE_AA)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        _label(out, f"{names[k]} {float(dets.scores[k]):.2f}", (x1, y1), color, lw)
    if dets.keypoints is not None and len(dets):
        _draw_keypoints(out, dets.keypoints, lw)
    return out


def _blend_class_map(out: np.ndarray, class_map: np.ndarray) -> None:
    """Alpha-blend a (H, W) class-index map (the image's size) in the class colours."""
    cm = np.asarray(class_map)
    if cm.shape != out.shape[:2]:
        cm = cv2.resize(cm.astype(np.int32), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    ids = np.unique(cm)
    lut = np.zeros((int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 1, 3), np.float32)
    for c in ids[ids >= 0].tolist():
        lut[c] = class_color(int(c))
    color = lut[np.clip(cm, 0, None)]
    valid = (cm >= 0)[..., None]
    blended = out.astype(np.float32) * (1 - MASK_ALPHA) + color * MASK_ALPHA
    out[:] = np.where(valid, blended, out).astype(np.uint8)


def _draw_top_classes(out: np.ndarray, dets: Detections, lw: int) -> np.ndarray:
    """One tag per top class, stacked down the top-left corner."""
    scale = max(0.4, lw / 3)
    y = 0
    for name, cls, s in zip(dets.names, dets.class_ids.tolist(), dets.scores.tolist()):
        (_, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, lw - 1))
        y += th + base + 4
        _label(out, f"{name} {float(s):.2f}", (0, y), class_color(int(cls)), lw)
    return out


def _draw_keypoints(out: np.ndarray, keypoints: np.ndarray, lw: int) -> None:
    """Limbs between visible keypoints (COCO skeleton when there are 17), then the points."""
    radius = max(2, lw + 1)
    for person in np.asarray(keypoints, np.float32):
        visible = person[:, 2] > KPT_VISIBLE
        pts = [(round(float(x)), round(float(y))) for x, y in person[:, :2]]
        if len(person) == COCO_KEYPOINTS:
            for j, (a, b) in enumerate(COCO_SKELETON):
                if visible[a] and visible[b]:
                    cv2.line(out, pts[a], pts[b], class_color(j + 1), lw, cv2.LINE_AA)
        for j, p in enumerate(pts):
            if visible[j]:
                cv2.circle(out, p, radius, class_color(j), -1, cv2.LINE_AA)


def _rotated_corners(rbox: np.ndarray) -> np.ndarray:
    """The 4 corners of one ``cx, cy, w, h, angle`` box as int32 (4, 1, 2) for ``cv2.polylines``."""
    return np.round(rbox_corners(np.asarray(rbox, np.float64)[None])[0]).astype(np.int32).reshape(4, 1, 2)


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
