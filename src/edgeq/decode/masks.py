"""Instance masks from prototype masks and per-detection coefficients.

For each kept detection: ``sigmoid(coefs @ protos)`` at proto resolution, bilinearly sampled
(``align_corners=False`` convention, edges clamped, as ``F.interpolate`` / ``cv2.resize`` do)
at the centre of every original-image pixel inside the box, then ``> 0.5``.

Why sample the original pixels directly: upsampling the whole proto plane to the letterboxed
input (640x640 per detection) and then undoing the letterbox costs a full-resolution plane per
detection (300 at conf 0.001) and resamples twice. Mapping each original pixel centre
``u + 0.5`` to the letterboxed input (``x = (u + 0.5) * gain + pad_x``) and on to the proto grid
(``x * Wp / W_in - 0.5``) is the same bilinear sample that "upsample to the input, crop the pad,
resize to the original" would read when ``gain == 1`` (e.g. every COCO image with a 640-pixel long side).
Otherwise the two differ only in edge pixels, because the two-stage path resamples an already
thresholded mask (``tests/test_runtime_masks.py`` bounds the difference). Only the proto band
under each box is ever touched, and the bilinear interpolation is separable (rows, then columns).

Cropping keeps the pixels whose centre lies in the box (``x1 <= u + 0.5 < x2``; HAL's
``MaskResolution.Scaled`` tiles span the same ``round(x1)..round(x2)``; Ultralytics' ``crop_mask``
tests the index ``u`` itself, half a pixel to the right). It is applied after the upsample, as
MODELS.md §5 and HAL do, so mask edges are not eroded by a bilinear blend with zeros.

``protos`` here is always (Hp, Wp, nm) float32; ``Decoder.protos`` produces it from NHWC or NCHW.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeq.calib.preprocess import Letterbox


@dataclass(frozen=True)
class _Axis:
    """Per original pixel along one axis: the two proto taps and the weight of the second."""

    i0: np.ndarray
    i1: np.ndarray
    frac: np.ndarray

    @classmethod
    def build(cls, n_orig: int, gain: float, pad: float, n_in: int, n_proto: int) -> "_Axis":
        centres = (np.arange(n_orig, dtype=np.float64) + 0.5) * gain + pad
        src = np.maximum(centres * (n_proto / n_in) - 0.5, 0.0)
        j0 = np.floor(src)
        frac = (src - j0).astype(np.float32)
        i0 = np.clip(j0.astype(np.int64), 0, n_proto - 1)
        i1 = np.clip(i0 + 1, 0, n_proto - 1)
        return cls(i0, i1, frac)


def _pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels ``p`` whose centre ``p + 0.5`` lies in ``[lo, hi)``, clipped to [0, n)."""
    return max(0, math.ceil(lo - 0.5)), min(n, math.ceil(hi - 0.5))


def _box_mask(protos: np.ndarray, coef: np.ndarray, ys: _Axis, xs: _Axis, rows: slice, cols: slice) -> np.ndarray:
    """The thresholded mask of one detection over original pixels ``rows`` x ``cols``."""
    ri0, ri1, fy = ys.i0[rows], ys.i1[rows], ys.frac[rows]
    ci0, ci1, fx = xs.i0[cols], xs.i1[cols], xs.frac[cols]
    r0, c0 = int(ri0[0]), int(ci0[0])  # taps are monotonic: the band starts at the first one
    band = protos[r0 : int(ri1[-1]) + 1, c0 : int(ci1[-1]) + 1]
    # einsum/gathers rather than BLAS: these products are small and many, and BLAS threading
    # costs more than it saves on them (several times slower on a busy machine).
    prob = 1.0 / (1.0 + np.exp(-np.einsum("hwc,c->hw", band, coef)))
    a = prob[ri0 - r0]
    a += (prob[ri1 - r0] - a) * fy[:, None]
    b = a[:, ci0 - c0]
    b += (a[:, ci1 - c0] - b) * fx
    return b > 0.5


def process_masks(
    protos: np.ndarray,
    coefs: np.ndarray,
    boxes_orig: np.ndarray,
    letterbox: Letterbox,
    input_hw: tuple[int, int],
) -> np.ndarray:
    """Binary instance masks at original-image resolution.

    Args:
        protos: (Hp, Wp, nm) float32 prototype masks.
        coefs: (K, nm) float32 mask coefficients of the kept detections.
        boxes_orig: (K, 4) xyxy boxes in original-image pixels.
        letterbox: the mapping used to build the model input.
        input_hw: model input (height, width).

    Returns:
        (K, orig_h, orig_w) bool masks.
    """
    h0, w0 = letterbox.orig_h, letterbox.orig_w
    out = np.zeros((coefs.shape[0], h0, w0), bool)
    if coefs.shape[0] == 0:
        return out
    hp, wp, _ = protos.shape
    ys = _Axis.build(h0, letterbox.gain, letterbox.pad_y, input_hw[0], hp)
    xs = _Axis.build(w0, letterbox.gain, letterbox.pad_x, input_hw[1], wp)
    coefs = coefs.astype(np.float32, copy=False)
    for k in range(coefs.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in boxes_orig[k])
        u0, u1 = _pixel_range(x1, x2, w0)
        v0, v1 = _pixel_range(y1, y2, h0)
        if u1 > u0 and v1 > v0:
            out[k, v0:v1, u0:u1] = _box_mask(protos, coefs[k], ys, xs, slice(v0, v1), slice(u0, u1))
    return out
