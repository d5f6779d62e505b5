"""Cross-layer equalization (CLE), applied only where it is exact.

A conv ``P`` whose output reaches other convs ``C`` only through ops that commute with a
positive per-channel scale (none, MaxPool, Resize, ReLU, a channel Concat) computes the same
function after ``P``'s output channel ``c`` is divided by ``s_c > 0`` (weights and bias) and the
matching input channels of every ``C`` are multiplied by ``s_c``. The tensor between them is
quantized per tensor, so a few channels with large ranges cost every other channel its
resolution; equalization evens the channel ranges out, moving the imbalance into ``C``'s
weights, which are quantized per output channel.

With activation ranges ``a_c`` (measured on a few images) and ``C``'s input-channel weight
ranges ``r_c``, ``s_c = sqrt(a_c / r_c)`` leaves both at ``sqrt(a_c * r_c)``; without them, the
producer's weight ranges stand in for ``a_c`` (data-free CLE).

Scaling ``C``'s *input* channels changes the values inside each of its per-output-channel
quantized filters, so weights that were exactly representable (as in models rebuilt from INT8
weights) pick up rounding error; the producer's output-channel scale is absorbed exactly.

SiLU (and every other activation that is not positively homogeneous) breaks the equivalence:
``SiLU(x / s) != SiLU(x) / s``. In YOLOv8 nearly every conv ends in SiLU, so the exact pairs
are few: the segmentation Proto's ``ConvTranspose`` upsample feeding ``cv2``, and SPPF's
``cv1 -> MaxPool x3 -> Concat -> cv2`` in graphs whose ``cv1`` has no activation.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.graph.topology import Topology

#: Ops that commute with a positive per-channel scale of their (first) input.
TRANSPARENT = {"MaxPool", "Resize", "Relu", "Identity", "Upsample"}
#: Producer/consumer conv kinds and their (output-channel axis, input-channel axis) in ONNX layout.
_AXES = {"Conv": (0, 1), "ConvTranspose": (1, 0)}
#: Scales are kept within [1/MAX_SCALE, MAX_SCALE] so no weight range explodes.
MAX_SCALE = 16.0


@dataclass(frozen=True)
class Pair:
    """A producer conv and the conv inputs its output channels reach (with channel offsets)."""

    producer: onnx.NodeProto
    tensor: str
    consumers: tuple[tuple[onnx.NodeProto, int], ...]


@dataclass
class Equalization:
    """The equalized graph (a copy) and what was done."""

    model: onnx.ModelProto
    record: dict[str, Any] = field(default_factory=dict)


def _group(node: onnx.NodeProto) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def _is_linear_conv(node: onnx.NodeProto, topo: Topology) -> bool:
    return (node.op_type in _AXES and _group(node) == 1 and len(node.input) > 1
            and topo.const(node.input[1]) is not None
            and (len(node.input) < 3 or not node.input[2] or topo.const(node.input[2]) is not None))


def _concat_offset(node: onnx.NodeProto, tensor: str, topo: Topology) -> int | None:
    """Channel offset of ``tensor`` in a channel concat's output (None: other axis or unknown)."""
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    rank = topo.rank(node.output[0])
    if axis is None or rank is None or axis % rank != 1:
        return None
    offset = 0
    for x in node.input:
        if x == tensor:
            return offset
        shape = topo.shapes.get(x)
        if shape is None:
            return None
        offset += shape[1]
    return None


def _trace(topo: Topology, tensor: str, offset: int, outputs: set[str]) -> list[tuple[onnx.NodeProto, int]] | None:
    """Every conv input reached from ``tensor`` through transparent ops, or None if any path is not."""
    if tensor in outputs or not topo.consumers.get(tensor):
        return None
    found: list[tuple[onnx.NodeProto, int]] = []
    for node in topo.consumers[tensor]:
        if node.op_type in _AXES and node.input[0] == tensor and _is_linear_conv(node, topo):
            found.append((node, offset))
            continue
        if node.op_type in TRANSPARENT and node.input[0] == tensor and tensor not in node.input[1:]:
            reached = _trace(topo, node.output[0], offset, outputs)
        elif node.op_type == "Concat":
            extra = _concat_offset(node, tensor, topo)
            reached = None if extra is None or list(node.input).count(tensor) > 1 else \
                _trace(topo, node.output[0], offset + extra, outputs)
        else:
            reached = None
        if reached is None:
            return None
        found.extend(reached)
    return found


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Every producer conv whose output may be equalized exactly against its consumer convs."""
    topo = Topology.of(onnx.shape_inference.infer_shapes(model))
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for node in model.graph.node:
        if not _is_linear_conv(node, topo):
            continue
        reached = _trace(topo, node.output[0], 0, outputs)
        if reached:
            pairs.append(Pair(node, node.output[0], tuple(reached)))
    return pairs


def _in_channel_ranges(pair: Pair, weights: Mapping[str, np.ndarray], channels: int) -> np.ndarray:
    """Largest |weight| reading each of the producer's channels, over all consumers."""
    r = np.zeros(channels)
    for node, offset in pair.consumers:
        w = weights[node.input[1]]
        axis = _AXES[node.op_type][1]
        per_in = np.abs(np.moveaxis(w, axis, 0)[offset: offset + channels]).reshape(channels, -1).max(1)
        r = np.maximum(r, per_in)
    return r


def channel_scales(act_range: np.ndarray, weight_range: np.ndarray) -> np.ndarray:
    """``s_c = sqrt(a_c / r_c)``, normalised to geometric mean 1 and clamped to :data:`MAX_SCALE`."""
    ok = (act_range > 0) & (weight_range > 0)
    s = np.ones_like(act_range, dtype=np.float64)
    s[ok] = np.sqrt(act_range[ok] / weight_range[ok])
    if ok.any():
        s[ok] /= np.exp(np.mean(np.log(s[ok])))
    return np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE)


def _scale_producer(pair: Pair, inits: dict[str, onnx.TensorProto], s: np.ndarray) -> None:
    node = pair.producer
    axis = _AXES[node.op_type][0]
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    shape = [1] * w.ndim
    shape[axis] = -1
    _set(inits, node.input[1], w / s.reshape(shape))
    if len(node.input) > 2 and node.input[2]:
        _set(inits, node.input[2], numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) / s)


def _scale_consumers(pair: Pair, inits: dict[str, onnx.TensorProto], s: np.ndarray) -> None:
    for node, offset in pair.consumers:
        axis = _AXES[node.op_type][1]
        w = np.moveaxis(numpy_helper.to_array(inits[node.input[1]]).astype(np.float64), axis, 0).copy()
        w[offset: offset + s.size] *= s.reshape((-1,) + (1,) * (w.ndim - 1))
        _set(inits, node.input[1], np.moveaxis(w, 0, axis))


def _set(inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def equalize(model: onnx.ModelProto, act_ranges: Mapping[str, np.ndarray] | None = None) -> Equalization:
    """A copy of ``model`` with every exact CLE pair equalized.

    Args:
        model: float ONNX graph (weights as initializers).
        act_ranges: producer output tensor -> per-channel max |x| over calibration images
            (see :func:`channel_ranges`); absent: the producer's weight ranges stand in.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = find_pairs(out)
    inits = {t.name: t for t in out.graph.initializer}
    shared = _shared_weights(out)
    done = []
    for pair in pairs:
        names = [pair.producer.input[1]] + [n.input[1] for n, _ in pair.consumers]
        if any(shared.get(n, 0) > 1 for n in names):
            continue
        weights = {n: numpy_helper.to_array(inits[n]).astype(np.float64) for n in names}
        w1 = weights[pair.producer.input[1]]
        out_axis = _AXES[pair.producer.op_type][0]
        channels = w1.shape[out_axis]
        if act_ranges is not None and pair.tensor in act_ranges:
            a = np.asarray(act_ranges[pair.tensor], np.float64)
        else:
            a = np.abs(np.moveaxis(w1, out_axis, 0)).reshape(channels, -1).max(1)
        s = channel_scales(a, _in_channel_ranges(pair, weights, channels))
        _scale_producer(pair, inits, s)
        _scale_consumers(pair, inits, s)
        done.append({"producer": pair.producer.name or pair.tensor, "consumers": len(pair.consumers),
                     "spread_before": _spread(a), "spread_after": _spread(a / s)})
    return Equalization(out, {"pairs": len(done), "equalized": done})


def _shared_weights(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes read each initializer (a shared weight cannot be rescaled for one pair)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            counts[i] = counts.get(i, 0) + 1
    return counts


def _spread(r: np.ndarray) -> float:
    """Largest over median channel range: how much a per-tensor scale wastes on most channels."""
    r = np.asarray(r, np.float64)
    med = float(np.median(r[r > 0])) if (r > 0).any() else 0.0
    return round(float(r.max()) / med, 3) if med > 0 else 0.0


def channel_ranges(model: onnx.ModelProto, images: list[np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of ``tensors`` over float NCHW ``images`` (onnxruntime)."""
    from edgeq.graph.session import expose_all, make_session

    if not tensors:
        return {}
    session = make_session(expose_all(model, tensors), threads=None)
    name = session.get_inputs()[0].name
    ranges: dict[str, np.ndarray] = {}
    for x in images:
        for t, v in zip(tensors, session.run(tensors, {name: x})):
            m = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1))
            ranges[t] = np.maximum(ranges[t], m) if t in ranges else m
    return ranges


__all__ = ["Equalization", "Pair", "channel_ranges", "channel_scales", "equalize", "find_pairs"]
