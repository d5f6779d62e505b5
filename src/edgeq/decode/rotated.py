"""Rotated (oriented) boxes: decode, hulls, corners, probabilistic and exact IoU, rotated NMS.

A rotated box is ``cx, cy, w, h, angle`` (``xywhr``): centre, side lengths along the box's own
axes, and the angle in radians by which the ``w`` side is turned from the +x axis (clockwise on
screen, since image y points down), as Ultralytics' OBB heads emit it. Corners follow
Ultralytics' ``xywhr2xyxyxyxy``: with ``u = w/2 (cos, sin)`` and ``v = h/2 (-sin, cos)`` they
are ``c+u+v, c+u-v, c-u-v, c-u+v``.

Two overlap measures, used where each belongs:

* :func:`probiou` (**NMS**): the probabilistic IoU of Ultralytics' OBB NMS and validation
  (Llerena et al., arXiv:2106.06072): each box is a Gaussian with covariance ``R diag(w^2/12,
  h^2/12) R^T``, and ``1 - sqrt(1 - exp(-B))`` of their Bhattacharyya distance ``B`` (clamped to
  ``[eps, 100]``) is the overlap. Vectorised, and identical in formula to
  ``ultralytics.utils.metrics.batch_probiou``, so edgeq suppresses exactly the boxes Ultralytics
  does.
* :func:`polygon_iou` (**evaluation**): the exact area IoU of two convex polygons
  (Sutherland-Hodgman clipping), which is what DOTA-style metrics score against polygon ground
  truth; probiou is not an area ratio (two disjoint boxes still score above 0).

:func:`rotated_nms` follows ``ultralytics.utils.ops.nms_rotated`` (8.3/8.4): candidates sorted by
descending score, and a candidate is dropped when *any* higher-scored candidate of the same class
(class-aware) or of any class (agnostic) has ``probiou >= iou`` with it, suppressed or not (Fast
NMS, the upper-triangle rule). Ultralytics makes it class-aware by shifting centres 7680 px per
class, which leaves a residual overlap of ~0 between classes; here classes are masked exactly.
"""
from __future__ import annotations

import numpy as np

#: Ultralytics' eps in probiou
PROBIOU_EPS = 1e-7
#: Ultralytics' ``max_nms``: at most this many candidates (the best-scored) enter NMS
MAX_NMS = 30000
#: candidates per block of the chunked NMS (memory: CHUNK x N doubles)
CHUNK = 1024


# ----------------------------------------------------------------------------- decode / geometry


def dist2rbox(ltrb: np.ndarray, angle: np.ndarray, anchors: np.ndarray, stride: tuple[float, float]) -> np.ndarray:
    """Ultralytics' ``dist2rbox`` then ``* stride``, as the OBB export's tail computes it.

    ``ltrb`` (M, 4) grid-unit distances, ``angle`` (M,) radians, ``anchors`` (M, 2) anchor centres
    in grid units (``grid + 0.5``) -> (M, 5) ``cx, cy, w, h, angle`` in input pixels:
    ``xf, yf = (rb - lt) / 2``; ``x = xf cos - yf sin``, ``y = xf sin + yf cos``;
    ``c = ((x, y) + anchor) * stride``; ``(w, h) = (lt + rb) * stride``.
    """
    lt, rb = ltrb[:, :2], ltrb[:, 2:4]
    cos, sin = np.cos(angle), np.sin(angle)
    xf, yf = ((rb - lt) / 2).T
    x = xf * cos - yf * sin
    y = xf * sin + yf * cos
    sx, sy = stride
    wh = lt + rb
    return np.stack([(x + anchors[:, 0]) * sx, (y + anchors[:, 1]) * sy, wh[:, 0] * sx, wh[:, 1] * sy, angle],
                    axis=1).astype(np.float32)


def rotated_hull(rboxes: np.ndarray) -> np.ndarray:
    """(N, 5) xywhr -> (N, 4) xyxy axis-aligned hulls (the smallest upright box holding each)."""
    r = np.asarray(rboxes, np.float64).reshape(-1, 5)
    cos, sin = np.abs(np.cos(r[:, 4])), np.abs(np.sin(r[:, 4]))
    hw, hh = np.abs(r[:, 2]) / 2, np.abs(r[:, 3]) / 2
    ex, ey = hw * cos + hh * sin, hw * sin + hh * cos
    return np.stack([r[:, 0] - ex, r[:, 1] - ey, r[:, 0] + ex, r[:, 1] + ey], axis=1).astype(np.float32)


def rbox_corners(rboxes: np.ndarray) -> np.ndarray:
    """(N, 5) xywhr -> (N, 4, 2) corners in Ultralytics' ``xywhr2xyxyxyxy`` order."""
    r = np.asarray(rboxes, np.float64).reshape(-1, 5)
    cos, sin = np.cos(r[:, 4]), np.sin(r[:, 4])
    u = np.stack([r[:, 2] / 2 * cos, r[:, 2] / 2 * sin], axis=1)
    v = np.stack([-r[:, 3] / 2 * sin, r[:, 3] / 2 * cos], axis=1)
    c = r[:, :2]
    return np.stack([c + u + v, c + u - v, c - u - v, c - u + v], axis=1)


# ----------------------------------------------------------------------------- probabilistic IoU


def _covariance(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, t = r[:, 2] ** 2 / 12, r[:, 3] ** 2 / 12, r[:, 4]
    cos, sin = np.cos(t), np.sin(t)
    return a * cos**2 + b * sin**2, a * sin**2 + b * cos**2, (a - b) * cos * sin


def probiou(a: np.ndarray, b: np.ndarray, eps: float = PROBIOU_EPS) -> np.ndarray:
    """Pairwise probabilistic IoU of xywhr boxes ``a`` (N, 5) and ``b`` (M, 5) -> (N, M) float64.

    The formula of ``ultralytics.utils.metrics.batch_probiou`` (computed in float64 here).
    """
    a = np.asarray(a, np.float64).reshape(-1, 5)
    b = np.asarray(b, np.float64).reshape(-1, 5)
    a1, b1, c1 = (x[:, None] for x in _covariance(a))
    a2, b2, c2 = (x[None, :] for x in _covariance(b))
    dx = a[:, None, 0] - b[None, :, 0]
    dy = a[:, None, 1] - b[None, :, 1]
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
    det = sa * sb - sc**2
    t1 = (sa * dy**2 + sb * dx**2) / (det + eps) * 0.25
    t2 = (sc * (-dx) * dy) / (det + eps) * 0.5
    prod = np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)
    t3 = np.log(det / (4 * np.sqrt(prod) + eps) + eps) * 0.5
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    return 1.0 - np.sqrt(1.0 - np.exp(-bd) + eps)


# ----------------------------------------------------------------------------- exact polygon IoU


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned shoelace area of a (K, 2) polygon."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def convex_ccw(poly: np.ndarray) -> np.ndarray:
    """The convex hull of a polygon's points, counter-clockwise (Andrew's monotone chain)."""
    pts = sorted(set(map(tuple, np.asarray(poly, np.float64).reshape(-1, 2).tolist())))
    if len(pts) < 3:
        return np.asarray(pts, np.float64).reshape(-1, 2)

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], np.float64)


def _clip(subject: np.ndarray, clipper: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: ``subject`` clipped to the convex, counter-clockwise ``clipper``."""
    out = subject
    n = len(clipper)
    for i in range(n):
        if len(out) == 0:
            break
        a, b = clipper[i], clipper[(i + 1) % n]
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])  # >= 0: inside (left of edge)
        nxt = np.roll(out, -1, axis=0)
        side_n = np.roll(side, -1)
        pts = []
        for k in range(len(out)):
            if side[k] >= 0:
                pts.append(out[k])
            if (side[k] >= 0) != (side_n[k] >= 0):
                t = side[k] / (side[k] - side_n[k])
                pts.append(out[k] + t * (nxt[k] - out[k]))
        out = np.asarray(pts, np.float64).reshape(-1, 2)
    return out


def polygon_iou(p: np.ndarray, q: np.ndarray) -> float:
    """Exact area IoU of two polygons (each taken as its convex hull: rotated boxes, DOTA quads)."""
    p, q = convex_ccw(p), convex_ccw(q)
    ap, aq = polygon_area(p), polygon_area(q)
    if ap <= 0 or aq <= 0:
        return 0.0
    inter = polygon_area(_clip(p, q))
    union = ap + aq - inter
    return float(inter / union) if union > 0 else 0.0


def polygon_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, K, 2) and (M, L, 2) polygons -> (N, M) exact IoU; pairs whose hulls miss are 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)), np.float64)
    if not len(a) or not len(b):
        return out
    la, lb = a.min(axis=1), b.min(axis=1)
    ha, hb = a.max(axis=1), b.max(axis=1)
    touch = ((la[:, None, 0] < hb[None, :, 0]) & (lb[None, :, 0] < ha[:, None, 0])
             & (la[:, None, 1] < hb[None, :, 1]) & (lb[None, :, 1] < ha[:, None, 1]))
    hulls_a = {}
    for i, j in zip(*np.nonzero(touch)):
        hulls_a.setdefault(i, convex_ccw(a[i]))
        out[i, j] = polygon_iou(hulls_a[i], b[j])
    return out


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact pairwise area IoU of xywhr boxes ``a`` (N, 5) and ``b`` (M, 5) -> (N, M)."""
    return polygon_iou_matrix(rbox_corners(a), rbox_corners(b))


# ----------------------------------------------------------------------------- NMS


def rotated_nms(rboxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int = 300,
                class_ids: np.ndarray | None = None) -> np.ndarray:
    """Ultralytics' OBB NMS (probiou, Fast NMS): indices of the kept boxes, best first.

    ``class_ids`` None: class-agnostic. At most :data:`MAX_NMS` best-scored candidates are
    considered (as Ultralytics does) and ``max_det`` returned. A candidate's fate depends only
    on the candidates scored above it, so blocks are decided in score order and the work stops
    once ``max_det`` are kept.
    """
    n = int(scores.shape[0])
    if n == 0 or max_det <= 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")[:MAX_NMS]
    r = np.asarray(rboxes, np.float64)[order]
    cls = None if class_ids is None else np.asarray(class_ids)[order]
    kept: list[np.ndarray] = []
    count = 0
    for start in range(0, len(order), CHUNK):
        stop = min(start + CHUNK, len(order))
        ious = probiou(r[:stop], r[start:stop])  # (stop, block): rows are the higher-or-equal candidates
        hit = ious >= iou
        rows = np.arange(stop)[:, None]
        cols = np.arange(start, stop)[None, :]
        hit &= rows < cols  # only higher-scored candidates suppress (the upper triangle)
        if cls is not None:
            hit &= cls[:stop, None] == cls[None, start:stop]
        keep = np.flatnonzero(~hit.any(axis=0)) + start
        kept.append(keep)
        count += keep.size
        if count >= max_det:
            break
    out = np.concatenate(kept)[:max_det]
    return order[out].astype(np.int64)


__all__ = ["dist2rbox", "polygon_iou", "polygon_iou_matrix", "probiou", "rbox_corners", "rotated_hull",
           "rotated_iou", "rotated_nms"]
