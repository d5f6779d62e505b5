"""Empirical bias correction: fold the systematic error INT8 adds at each conv into its bias.

Quantization noise does not stay zero-mean: SiLU of a noisy input, the LOGISTIC table's 1/256
steps (whose largest code is 255/256, not 1), clipped tails and per-channel weight rounding all
shift each conv's output by a per-channel amount, and the shifts add up with depth. A bias can
absorb any per-channel constant, so each conv gets the shift ``d_c`` that minimises

    mean((t(q_c - d_c) - t(f_c))**2)

where ``f`` is the float network's conv output, ``q`` the quantized network's accumulator
(inputs as the INT8 network computes them, dequantized per-channel INT8 weights) before its own
output rounding (which belongs to the output range, not to a drift), and ``t`` the function the
conv's consumers apply first (SiLU in YOLO; identity otherwise, where ``d`` is the plain mean
difference). Judging the shift after SiLU matters: most pre-activations are very negative, where
SiLU is flat and any error is harmless; their mean would otherwise decide the shift.

The correction is sequential, front to back, in one pass: the graph runs node by node in
fake-quantized form (:mod:`edgeq.quant.simulate`, equivalent to the TFLite integer kernels up to
fixed-point rounding) on a few calibration images; each conv is corrected with every earlier
correction already in place, and its corrected output flows on. (Correcting every conv at once
from one measurement double-counts: a conv would also be corrected for the error it inherits,
which its producers are corrected for too, and the overshoot compounds with depth.) Graph
outputs are left alone by default: a head output's error over all anchors is the background's.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.calib.preprocess import to_nchw_float
from edgeq.calib.ranges import IDENTITY, Transfer, consumer_transfers
from edgeq.graph.view import GraphView
from edgeq.quant.plan import QuantPlan
from edgeq.quant.simulate import WEIGHT_INPUT, LiveValues, fed_params, opset_of, quantized_weights, sessions

#: Calibration images used to measure the drift (the first ones of the calibration set).
IMAGES = 32
#: Gauss-Newton steps per conv for shifts seen through a nonlinearity.
GAUSS_NEWTON_STEPS = 3


@dataclass
class BiasCorrection:
    """The corrected graph and what was done (recorded in provenance).

    Attributes:
        model: a copy of the float graph with corrected conv biases (same tensor names).
        shifts: conv output name -> per-channel amount subtracted from its bias.
        record: summary for provenance.
    """

    model: onnx.ModelProto
    shifts: dict[str, np.ndarray] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def with_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every conv with constant weights has a bias initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type not in WEIGHT_INPUT or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2]:
            continue
        channels = numpy_helper.to_array(inits[node.input[1]]).shape[1 if node.op_type == "ConvTranspose" else 0]
        name = f"{node.output[0]}/bias"
        out.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
    return out


def _channel_means(values: Iterable[np.ndarray]) -> np.ndarray:
    """Per-channel (axis 1) mean over every image and position."""
    means = [v.mean(axis=tuple(i for i in range(v.ndim) if i != 1), dtype=np.float64) for v in values]
    return np.mean(means, axis=0)


def _shape(shift: np.ndarray, ndim: int) -> np.ndarray:
    return shift.reshape((1, -1) + (1,) * (ndim - 2)).astype(np.float32)


def channel_shift(flt: Sequence[np.ndarray], qnt: Sequence[np.ndarray], transfer: Transfer = IDENTITY,
                  steps: int = GAUSS_NEWTON_STEPS) -> np.ndarray:
    """Per-channel shift ``d`` minimising the mean of ``(transfer(q - d) - transfer(f))**2``.

    For the identity this is the plain mean difference. Through SiLU the error is weighted by
    the function's slope: positions where SiLU is flat (very negative pre-activations, which
    are most of them) barely count, so the shift serves the values the next layer actually
    sees. (Matching the *mean* through SiLU instead is dominated by those flat positions and
    makes the network worse.) Solved by Gauss-Newton from zero. ``flt``/``qnt`` hold one array
    per image (any float dtype; each is computed on in float32 one at a time).
    """
    if transfer is IDENTITY:
        return _channel_means(qnt) - _channel_means(flt)
    d = np.zeros(flt[0].shape[1])
    for _ in range(steps):
        gradient, curvature = np.zeros_like(d), np.zeros_like(d)
        for f, q in zip(flt, qnt):
            x = q.astype(np.float32) - _shape(d, q.ndim)
            slope = transfer.grad(x)
            gradient += _channel_means([(transfer.fn(x) - transfer.fn(f.astype(np.float32))) * slope])
            curvature += _channel_means([slope * slope])
        d = d + gradient / np.maximum(curvature, 1e-6 * len(flt))
    return d


class _Runner:
    """Runs the float and the fake-quantized graph side by side, node by node, on a few images.

    Every image is held at the current node: float16 float values and integer codes for the
    quantized ones (exactly its values), a third of float32 storage together. A node runs one
    image at a time; only a conv's outputs are kept for all images (float16) until its shift
    is known.
    """

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, images: Sequence[np.ndarray]) -> None:
        self.view = GraphView(model)
        self.runs = sessions(self.view, opset_of(model))
        self.float_params = dict(self.view.consts)
        self.quant_params = {**self.view.consts, **quantized_weights(self.view, plan)}
        name = self.view.inputs[0]
        self.flt = [LiveValues(self.view, half=True) for _ in images]
        self.qnt = [LiveValues(self.view, grids=plan.activations) for _ in images]
        for f, q, rgb in zip(self.flt, self.qnt, images):
            x = to_nchw_float(rgb)
            f[name], q[name] = x, x

    def _run(self, node: onnx.NodeProto, live: LiveValues, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runs[id(node)]({**live.inputs_of(node), **{i: params[i] for i in fed_params(node)}})

    def step(self, node: onnx.NodeProto) -> None:
        """Run a node on every image and store its outputs."""
        for f, q in zip(self.flt, self.qnt):
            self._store(node, f, self._run(node, f, self.float_params))
            self._store(node, q, self._run(node, q, self.quant_params))

    def conv_outputs(self, node: onnx.NodeProto) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A conv's float outputs and quantized accumulators (before rounding) on every image."""
        y = node.output[0]
        flt = [self._run(node, f, self.float_params)[y].astype(np.float16) for f in self.flt]
        qnt = [self._run(node, q, self.quant_params)[y] for q in self.qnt]
        return flt, qnt

    def store_conv(self, node: onnx.NodeProto, flt: list[np.ndarray], qnt: list[np.ndarray], shift: np.ndarray) -> None:
        """Store a conv's outputs, the quantized ones moved by ``-shift`` (its corrected bias)."""
        y = node.output[0]
        for f, q, out_f, out_q in zip(self.flt, self.qnt, flt, qnt):
            self._store(node, f, {y: out_f.astype(np.float32)})
            self._store(node, q, {y: out_q.astype(np.float32) - _shape(shift, out_q.ndim)})

    @staticmethod
    def _store(node: onnx.NodeProto, live: LiveValues, outputs: dict[str, np.ndarray]) -> None:
        for name, v in outputs.items():
            live[name] = v  # a quantized run stores codes on the planned grid: fake-quantized
        live.release(node)


def correct_biases(model: onnx.ModelProto, plan: QuantPlan, images: Sequence[np.ndarray], *,
                   outputs: bool = False) -> BiasCorrection:
    """A copy of ``model`` whose conv biases cancel the mean drift INT8 adds, measured on ``images``.

    Args:
        model: the float graph the plan was made for (not modified).
        plan: its quantization plan (weights' per-channel parameters, every activation's grid).
        images: letterboxed RGB uint8 HWC calibration images.
        outputs: also correct convs that produce graph outputs. Off by default: a head output's
            mean over all anchors is the background's, and shifting it moves the rare
            foreground logits that decoding ranks by.
    """
    corrected = with_biases(model)
    if not images:
        return BiasCorrection(corrected, record={"convs": 0, "images": 0})
    transfers = consumer_transfers(corrected)
    skip = set() if outputs else {o.name for o in corrected.graph.output}
    runner = _Runner(corrected, plan, images)
    shifts: dict[str, np.ndarray] = {}
    for node in runner.view.nodes:
        y = node.output[0]
        if node.op_type in WEIGHT_INPUT and node.input[1] in plan.weights and y not in skip:
            flt, qnt = runner.conv_outputs(node)
            shifts[y] = channel_shift(flt, qnt, transfers.get(y, IDENTITY))
            runner.store_conv(node, flt, qnt, shifts[y])
        else:
            runner.step(node)
    _fold(corrected, runner.view, shifts)
    return BiasCorrection(corrected, shifts, _record(shifts, plan, len(images)))


def _fold(model: onnx.ModelProto, view: GraphView, shifts: dict[str, np.ndarray]) -> None:
    """bias -= shift, in the model's initializers."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in view.nodes:
        y = node.output[0] if node.output else ""
        if y in shifts:
            bias = node.input[2]
            b = numpy_helper.to_array(inits[bias]).astype(np.float64) - shifts[y]
            inits[bias].CopyFrom(numpy_helper.from_array(b.astype(np.float32), bias))


def _record(shifts: dict[str, np.ndarray], plan: QuantPlan, images: int) -> dict[str, Any]:
    """How many convs were corrected and how large the drifts were, in output quantization steps."""
    steps = [np.abs(s) / float(plan.activations[y].scale[0]) for y, s in shifts.items() if y in plan.activations]
    flat = np.concatenate(steps) if steps else np.zeros(1)
    return {
        "convs": len(shifts),
        "images": images,
        "mean_drift_steps": round(float(flat.mean()), 4),
        "max_drift_steps": round(float(flat.max()), 4),
    }


__all__ = ["IMAGES", "BiasCorrection", "correct_biases", "with_biases"]
