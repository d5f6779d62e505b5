"""Image classifiers (YOLOv8/YOLO11/YOLO26 ``-cls``): one class-probability vector per image.

**Discovery** (by structure, no node names). A classifier's graph output is a ``Softmax`` over
the last axis of a rank-2 ``[1, nc]`` tensor (through ``Identity``/``Cast`` nodes at most). The
endpoint is that Softmax's input: the class logits (the classifier ``Gemm``'s output).

**The cut.** The artifact's only output is the logits, int8 with their own scale; the softmax
runs in float in the decoder. An int8 softmax output would spend its 256 codes on [0, 1] and
round every small probability to zero, where the logits keep the ranking and the margins.

**Metadata: the ``class_logits`` extension type.** EdgeFirst schema v2 has no output type for
classification (its types are detection/segmentation ones; ``classes`` is the class index of an
end-to-end detector's boxes), so edgeq defines one, version 1::

    {"name": "class_logits", "type": "class_logits", "decoder": "edgeq-v1",
     "activation_required": "softmax", "shape": [1, nc],
     "dshape": [{"batch": 1}, {"num_classes": nc}], "dtype": "int8",
     "quantization": {"scale": s, "zero_point": z, "dtype": "int8"}}

``decoder: edgeq-v1`` names who defines the type and the version of its rules: dequantize,
softmax over ``num_classes`` (``activation_required``; ``none`` means the tensor already holds
probabilities), class index = position. A reader refuses a later version it does not know.
EdgeFirst's HAL parses ``type`` and ``decoder`` as closed enums, so it refuses these files (it
decodes no classifier either). Classifiers are preprocessed as Ultralytics does
(``classify_transforms``): short side to the model size, centre crop (``validation.preprocessing:
center_crop``, also an edgeq value: EdgeFirst has ``letterbox | resize``).

**Decoding** (:class:`ClassHead`): the runtime decoder's ``dense`` hook returns ``{"probs": (nc,)}``;
``edgeq.runtime`` turns that into the top-5 ``class_ids``/``scores`` of ``Detections``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from edgeq.decode.fields import Arrays, Candidates, QParams, quant_of
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily
from edgeq.graph.cut import cut_at_head
from edgeq.graph.heads import Endpoint, HeadSpec, not_found, producer_through
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike
from edgeq.meta.schema import ModelMeta, Output, Quant

#: the extension's output type and the ``decoder`` value of its current version
CLASS_LOGITS = "class_logits"
EXTENSION_VERSION = 1
DECODER = f"edgeq-v{EXTENSION_VERSION}"


class Classify(HeadFamily):
    """Classifiers: int8 class logits out, softmax in float."""

    name = "classify"
    nms = "class_agnostic"  # unused: no boxes
    iou = 0.7
    metric = "top1_top5"
    preprocessing = "center_crop"

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def cut(self, model: onnx.ModelProto, head: HeadSpec) -> onnx.ModelProto:
        """The cut graph, with the pooling + linear tail rewritten as convolutions (exact in float):
        ``GlobalAveragePool``/``ReduceMean(H, W)`` -> ``Flatten``/``Reshape`` -> ``Gemm`` becomes a
        depthwise ``Conv`` of weights ``1/(H*W)`` over the whole map, a 1x1 ``Conv`` holding the Gemm's
        weights and bias, and a ``Reshape`` to ``[1, nc]``: integer kernels every target has."""
        return _pool_linear_as_convs(cut_at_head(model, head), head.endpoints[0].name)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        by_name = {t.name: t for t in tensors}
        t = by_name[head.endpoints[0].name]
        return [class_logits_output(t.name, head.nc, t.dtype, t.scale, t.zero_point)]

    def decodes(self, meta: ModelMeta) -> bool:
        return meta.output(CLASS_LOGITS) is not None

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> ClassHead:
        return ClassHead(meta, quant)

    def decoded_errors(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                       head: HeadSpec) -> Iterable[DecodedError]:
        """Error of the softmax probabilities (what the ranking is read from)."""
        for e in head.endpoints:
            pf = softmax(ref[e.name].astype(np.float64))
            pq = softmax(test.get(e.name, ref[e.name]).astype(np.float64))
            yield "probs", float(np.sum((pq - pf) ** 2)), float(np.sum(pf * pf))


def class_logits_output(name: str, nc: int, dtype: str, scale: float, zero_point: int) -> Output:
    """The ``class_logits`` extension output (see the module docstring)."""
    quant = Quant(scale=float(scale), zero_point=int(zero_point), dtype=dtype) if dtype != "float32" else None
    return Output(
        name=name,
        type=CLASS_LOGITS,
        shape=[1, nc],
        dshape=[("batch", 1), ("num_classes", nc)],
        decoder=DECODER,
        activation_required="softmax",
        dtype=dtype,
        quantization=quant,
    )


# ----------------------------------------------------------------------------- discovery


def _softmax_axis(node: onnx.NodeProto, opset: int) -> int:
    default = -1 if opset >= 13 else 1
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """The class-logits endpoint of a classifier (None: no graph output is a last-axis Softmax)."""
    topo = Topology.of(model)
    outs = list(topo.graph.output)
    if len(outs) != 1:
        return None
    node = producer_through(topo, outs[0].name)
    if node is None or node.op_type != "Softmax":
        return None
    logits = node.input[0]
    shape = topo.shapes.get(logits)
    if shape is None or len(shape) != 2 or _softmax_axis(node, _opset(model)) not in (1, -1):
        return None
    if shape[0] != 1 or shape[1] < 2:
        raise not_found(topo, f"classifier logits have shape {list(shape)}; expected [1, classes]")
    nc = int(shape[1])
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"classifier has {nc} logits but metadata names {len(info.names)} classes")
    endpoint = Endpoint(logits, CLASS_LOGITS, CLASS_LOGITS, (1, nc), 1, None)
    return HeadSpec(family="classify", task="classify", nc=nc, reg_max=0, strides=(), endpoints=(endpoint,))


# ----------------------------------------------------------------------------- the cut


def _pool_linear_as_convs(model: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """Rewrite ``pool -> flatten -> Gemm`` ending at ``logits`` as convolutions (see ``Classify.cut``);
    the graph is returned unchanged when its tail is not that pattern."""
    topo = Topology.of(model)
    gemm = topo.producer.get(logits)
    if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) < 2:
        return model
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    w = topo.const(gemm.input[1])
    b = topo.const(gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else None
    flat = topo.producer.get(gemm.input[0])
    if w is None or attrs.get("transA", 0) or flat is None or flat.op_type not in ("Flatten", "Reshape"):
        return model
    pool = topo.producer.get(flat.input[0])
    if pool is None or not _is_spatial_mean(topo, pool):
        return model
    x = pool.input[0]
    shape = topo.shapes.get(x)
    if shape is None or len(shape) != 4 or shape[0] != 1:
        return model
    c, h, wd = (int(d) for d in shape[1:])
    weight = np.asarray(w, np.float32) * np.float32(attrs.get("alpha", 1.0))
    weight = weight if attrs.get("transB", 0) else weight.T  # (nc, C)
    nc = weight.shape[0]
    if weight.shape[1] != c:
        return model
    bias = np.zeros(nc, np.float32) if b is None else np.broadcast_to(np.asarray(b, np.float32).reshape(-1), (nc,)) * np.float32(attrs.get("beta", 1.0))
    from onnx import helper, numpy_helper

    pre = f"{logits}/edgeq"
    inits = [
        numpy_helper.from_array(np.full((c, 1, h, wd), 1.0 / (h * wd), np.float32), f"{pre}/mean_weight"),
        numpy_helper.from_array(np.ascontiguousarray(weight.reshape(nc, c, 1, 1)), f"{pre}/linear_weight"),
        numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), f"{pre}/linear_bias"),
        numpy_helper.from_array(np.asarray([1, nc], np.int64), f"{pre}/shape"),
    ]
    nodes = [
        helper.make_node("Conv", [x, f"{pre}/mean_weight"], [f"{pre}/mean"], name=f"{pre}/mean",
                         group=c, kernel_shape=[h, wd]),
        helper.make_node("Conv", [f"{pre}/mean", f"{pre}/linear_weight", f"{pre}/linear_bias"], [f"{pre}/linear"],
                         name=f"{pre}/linear", kernel_shape=[1, 1]),
        helper.make_node("Reshape", [f"{pre}/linear", f"{pre}/shape"], [logits], name=f"{pre}/reshape"),
    ]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    drop = {id(n) for n in (pool, flat, gemm)}
    kept = [n for n in model.graph.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept + nodes)
    used = {i for n in g.node for i in n.input}
    keep_init = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_init + inits)
    dropped = {t for n in (pool, flat) for t in n.output}
    vis = [v for v in g.value_info if v.name not in dropped]
    del g.value_info[:]
    g.value_info.extend(vis)
    return onnx.shape_inference.infer_shapes(out)


def _is_spatial_mean(topo: Topology, node: onnx.NodeProto) -> bool:
    """GlobalAveragePool, or ReduceMean over axes (2, 3) of a 4-D tensor (attribute or input)."""
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        const = topo.const(node.input[1])
        axes = None if const is None else [int(v) for v in np.asarray(const).reshape(-1)]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


# ----------------------------------------------------------------------------- decoding


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ClassHead:
    """Whole-image class probabilities from a ``class_logits`` output (the ``dense`` hook)."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        out = meta.output(CLASS_LOGITS)
        if out is None:
            raise ArtifactError("classifier metadata needs a 'class_logits' output")
        version = out.decoder or DECODER
        if not version.startswith("edgeq-v") or not version[7:].isdigit() or int(version[7:]) > EXTENSION_VERSION:
            raise ArtifactError(
                f"output {out.name!r} is a class_logits output of version {version!r}; this edgeq reads "
                f"up to {DECODER}",
                "upgrade edgeq, or convert the model again with this version",
            )
        self.name = out.physical[0].name
        q = quant_of(quant, out.physical[0])
        self.qp = QParams.from_quant(q, -1, self.name) if q is not None else None
        act = (out.activation_required or "softmax").lower()
        self.activation = None if act in ("none", "identity") else act
        self.nc = int(out.shape[-1])

    def logits(self, outputs: Arrays) -> np.ndarray:
        arr = np.asarray(outputs[self.name]).reshape(-1)
        return self.qp.dequantize(arr) if self.qp is not None else arr.astype(np.float32)

    def dense(self, outputs: Arrays) -> dict[str, np.ndarray]:
        x = self.logits(outputs).astype(np.float64)
        probs = softmax(x) if self.activation == "softmax" else x
        return {"probs": probs.astype(np.float32)}

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        return Candidates.concat([])

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        return None
