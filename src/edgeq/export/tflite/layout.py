"""Tensor layouts as permutations of the ONNX axes.

Every TFLite tensor the writer emits stores one ONNX tensor in some axis order. The order is a
permutation ``perm`` with ``stored = onnx_array.transpose(perm)``: the identity for tensors kept
in ONNX layout, ``NHWC = (0, 2, 3, 1)`` for 4-D activations (TFLite's convolutions, pools and
resizes work on NHWC). Keeping the permutation per tensor lets the writer insert a TRANSPOSE
only where a consumer really needs another order, and remap axis attributes exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Perm = tuple[int, ...]

NHWC: Perm = (0, 2, 3, 1)


def identity(rank: int) -> Perm:
    """The permutation that keeps the ONNX layout."""
    return tuple(range(rank))


def inverse(perm: Sequence[int]) -> Perm:
    """``inverse(p)`` undoes ``p``: ``x.transpose(p).transpose(inverse(p)) == x``."""
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def compose(first: Sequence[int], then: Sequence[int]) -> Perm:
    """The single permutation equal to transposing by ``first`` and then by ``then``."""
    return tuple(first[i] for i in then)


def between(src: Sequence[int], dst: Sequence[int]) -> Perm:
    """The TRANSPOSE permutation taking a tensor stored as ``src`` to one stored as ``dst``."""
    return compose(inverse(src), dst)


def default_perm(rank: int) -> Perm:
    """The layout the writer prefers: NHWC for 4-D tensors, ONNX order otherwise."""
    return NHWC if rank == 4 else identity(rank)


def stored_shape(onnx_shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    """The shape of an ONNX tensor stored in layout ``perm``."""
    return tuple(int(onnx_shape[p]) for p in perm)


def stored_axis(onnx_axis: int, perm: Sequence[int]) -> int:
    """Where ONNX axis ``onnx_axis`` (non-negative) sits in a tensor stored as ``perm``."""
    return list(perm).index(onnx_axis)


def to_stored(array: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """Reorder an ONNX-layout array into layout ``perm`` (contiguous)."""
    return np.ascontiguousarray(np.transpose(array, perm))


def to_onnx(array: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """Reorder an array stored in layout ``perm`` back into ONNX layout."""
    return np.ascontiguousarray(np.transpose(array, inverse(perm)))


def is_identity(perm: Sequence[int]) -> bool:
    return tuple(perm) == identity(len(perm))
