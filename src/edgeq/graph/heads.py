"""Find a YOLO head's per-scale endpoints by graph structure, not by node names.

An Ultralytics export ends in a *decode tail*: per-scale 4-D head tensors are reshaped to
rank 3 (YOLOv8/11: ``[1, C, H*W]``) or rank 5 (YOLOv5: ``[1, na, no, H, W]``), concatenated,
and decoded (DFL softmax, dist2bbox, sigmoid). The endpoints are the 4-D tensors right before
that first rank change, with channel-wise Concats unpacked into their inputs. The DFL is
recognised by its fixed ``arange(reg_max)`` 1x1 Conv after a Softmax, which gives ``reg_max``;
endpoints are then typed by channel count and concat order.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from edgeq.errors import HeadNotFoundError
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology

NUM_MASK_COEFS = 32


@dataclass(frozen=True)
class Endpoint:
    """One physical head output of the cut graph.

    Attributes:
        tensor: tensor name in the normalized (uncut) graph.
        kind: boxes | scores | objectness | mask_coefs | protos | detection (YOLOv5 single tensor).
        name: artifact output name (``boxes_0``, ``scores_2``, ``protos``).
        shape: NCHW shape.
        stride: pixels per cell (protos: input size / proto size).
        scale_index: index of the FPN level, None for protos.
        channels: the output channels of ``tensor`` this endpoint takes, in order; empty means all.
            A non-empty selection requires ``tensor`` to be a Conv output: the cut splits that Conv
            into one Conv per endpoint whose weights/biases are those output-channel rows (exact).
    """

    tensor: str
    kind: str
    name: str
    shape: tuple[int, ...]
    stride: int
    scale_index: int | None
    channels: tuple[int, ...] = ()


@dataclass(frozen=True)
class HeadSpec:
    """The head of a detection/segmentation model, as found in the graph."""

    family: str  # "yolov8" (DFL heads: YOLOv8, YOLO11) | "yolov5" (anchor heads)
    task: str
    nc: int
    reg_max: int
    strides: tuple[int, ...]
    endpoints: tuple[Endpoint, ...]
    nm: int = 0
    anchors: tuple[tuple[tuple[float, float], ...], ...] = ()  # per level, (w, h) in input pixels

    def of_kind(self, kind: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.kind == kind]

    def score_logits(self) -> set[str]:
        """The outputs holding logits the decoder reads through a sigmoid (class scores, objectness)."""
        return {e.name for e in self.endpoints if e.kind in ("scores", "objectness")}

    def describe(self) -> str:
        parts = [f"{self.family} {self.task} head, {self.nc} classes, reg_max {self.reg_max}, strides {list(self.strides)}"]
        parts += [f"  {e.name:14s} {e.kind:10s} {list(e.shape)} stride {e.stride}  <- {e.tensor}" for e in self.endpoints]
        return "\n".join(parts)


def _find_reg_max(topo: Topology) -> int | None:
    """reg_max from the DFL: Softmax (maybe via Transpose) feeding a 1x1 Conv with arange weights."""
    for node in topo.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = topo.const(node.input[1])
        if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            continue
        r = w.shape[1]
        if r > 1 and np.allclose(w.reshape(-1), np.arange(r)):
            return int(r)
    return None


def _tail_inputs(topo: Topology, output: str) -> list[str]:
    """4-D tensors entering the first rank-changing Reshape on the way to ``output``."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [output]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = topo.producer.get(t)
        if node is None:
            continue
        if node.op_type == "Reshape" and topo.rank(node.input[0]) == 4 and topo.rank(node.output[0]) != 4:
            found.append(node.input[0])
            continue
        stack.extend(i for i in node.input if i and i not in topo.constants)
    return found


def _unpack_concat(topo: Topology, tensor: str) -> list[str]:
    """Split a channel Concat into its inputs, recursively; other tensors stay as they are."""
    node = topo.producer.get(tensor)
    if node is not None and node.op_type == "Concat":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis in (1, -3):
            return [t for i in node.input for t in _unpack_concat(topo, i)]
    return [tensor]


def _not_found(topo: Topology, reason: str) -> HeadNotFoundError:
    outs = ", ".join(f"{o.name} {list(topo.shapes.get(o.name, ()))}" for o in topo.graph.output)
    return HeadNotFoundError(
        f"no known YOLO detect/segment head found: {reason} (graph outputs: {outs})",
        "use `--split combined`, which quantizes any model without cutting it, or give EdgeFirst "
        "`split_hints` with `--split-hints FILE`",
    )


def _is_grid(shape: tuple[int, ...], imgsz: tuple[int, int]) -> bool:
    """A per-scale feature map: its H and W divide the input with one common stride."""
    _, _, h, w = shape
    return imgsz[0] % h == 0 and imgsz[1] % w == 0 and imgsz[0] // h == imgsz[1] // w


def _dfl_endpoints(topo: Topology, info: ModelInfo, reg_max: int) -> list[Endpoint]:
    h_in = info.imgsz[0]
    by_level: dict[int, dict[str, str]] = {}
    for out in topo.graph.output:
        if topo.rank(out.name) != 3:
            continue
        for grouped in _tail_inputs(topo, out.name):
            if not _is_grid(topo.shapes[grouped], info.imgsz):
                continue  # e.g. the DFL conv output, which is inside the tail
            parts = _unpack_concat(topo, grouped)
            for pos, t in enumerate(parts):
                c, h = topo.shapes[t][1], topo.shapes[t][2]
                if len(parts) > 1:
                    kind = "boxes" if (c == 4 * reg_max and pos == 0) else "scores"
                else:
                    kind = "mask_coefs"
                by_level.setdefault(h, {})[kind] = t
    if not by_level:
        raise _not_found(topo, "no per-scale tensors before the decode tail")
    endpoints = []
    for idx, h in enumerate(sorted(by_level, reverse=True)):
        for kind in ("boxes", "scores", "mask_coefs"):
            if kind in by_level[h]:
                t = by_level[h][kind]
                endpoints.append(Endpoint(t, kind, f"{kind}_{idx}", topo.shapes[t], h_in // h, idx))
    return endpoints


def _protos(topo: Topology, info: ModelInfo) -> list[Endpoint]:
    for out in topo.graph.output:
        shape = topo.shapes.get(out.name)
        if shape and len(shape) == 4:
            return [Endpoint(out.name, "protos", "protos", shape, info.imgsz[0] // shape[2], None)]
    return []


def _sort(endpoints: list[Endpoint]) -> tuple[Endpoint, ...]:
    order = {"detection": 0, "boxes": 0, "objectness": 1, "scores": 2, "mask_coefs": 3, "protos": 4}
    return tuple(sorted(endpoints, key=lambda e: (order[e.kind], e.scale_index or 0)))


def discover_head(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec:
    """Locate the head endpoints of a normalized Ultralytics-style graph.

    Raises:
        HeadNotFoundError: with what was found, when the structure is not a known head.
    """
    topo = Topology.of(model)
    reg_max = _find_reg_max(topo)
    if reg_max is None:
        anchor_head = _anchor_head(topo, info)
        if anchor_head is not None:
            return anchor_head
        raise _not_found(topo, "no DFL (Softmax + fixed arange 1x1 Conv) and no YOLOv5 anchor grid in the decode tail")
    endpoints = _dfl_endpoints(topo, info, reg_max)
    kinds = {e.kind for e in endpoints}
    if not {"boxes", "scores"} <= kinds:
        raise _not_found(topo, f"found only {sorted(kinds)} per-scale tensors")
    protos = _protos(topo, info) if "mask_coefs" in kinds else []
    if "mask_coefs" in kinds and not protos:
        raise _not_found(topo, "mask coefficients found but no 4-D protos output")
    scores = [e for e in endpoints if e.kind == "scores"]
    nc = scores[0].shape[1]
    if info.names and len(info.names) != nc:
        raise _not_found(topo, f"class branch has {nc} channels but metadata names {len(info.names)} classes")
    strides = tuple(sorted({e.stride for e in endpoints if e.scale_index is not None}))
    return HeadSpec(
        family="yolov8",
        task="segment" if protos else "detect",
        nc=nc,
        reg_max=reg_max,
        strides=strides,
        endpoints=_sort(endpoints + protos),
        nm=protos[0].shape[1] if protos else 0,
    )


def _descendants(topo: Topology, tensor: str, depth: int) -> list[onnx.NodeProto]:
    found, frontier = [], [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for n in topo.consumers.get(t, []):
                found.append(n)
                nxt.extend(n.output)
        frontier = nxt
    return found


def _anchor_grid(topo: Topology, head_5d: str, na: int) -> tuple[tuple[float, float], ...] | None:
    """Anchor (w, h) in pixels from the ``(2*sigmoid(twh))**2 * anchor_grid`` Mul of the tail."""
    for node in _descendants(topo, head_5d, 8):
        if node.op_type != "Mul":
            continue
        for a, b in (node.input, node.input[::-1]):
            grid = topo.const(b)
            src = topo.producer.get(a)
            if grid is None or src is None or src.op_type != "Pow" or grid.shape[-1] != 2 or grid.size < 2 * na:
                continue
            per_anchor = grid.reshape(na, -1, 2)[:, 0]  # [1, na, H, W, 2]: same (w, h) on every cell
            return tuple((float(w), float(h)) for w, h in per_anchor)
    return None


def _splittable_conv(topo: Topology, tensor: str, channels: int) -> bool:
    """``tensor`` is the only output of a Conv with constant weights (and bias) of ``channels`` rows."""
    node = topo.producer.get(tensor)
    if node is None or node.op_type != "Conv" or len(node.output) != 1 or len(node.input) < 2:
        return False
    w = topo.const(node.input[1])
    if w is None or w.ndim != 4 or w.shape[0] != channels:
        return False
    return len(node.input) < 3 or not node.input[2] or topo.const(node.input[2]) is not None


def _anchor_head(topo: Topology, info: ModelInfo) -> HeadSpec | None:
    """A YOLOv5-style head: per level a conv ``[1, na*(5+nc), H, W]`` reshaped to ``[1, na, 5+nc, H, W]``.

    Each level's conv is described as three endpoints (``boxes_i`` with the na*4 box logits,
    ``objectness_i`` na*1, ``scores_i`` na*nc, anchor-major) that the cut gives their own convs,
    so each gets its own quantization scale. If any level's tensor is not a plain Conv output,
    every level stays one ``detection_i`` endpoint (the metadata describes one form per head).
    """
    levels = []
    for out in topo.graph.output:
        for t in _tail_inputs(topo, out.name):
            reshape = next((n for n in topo.consumers.get(t, []) if n.op_type == "Reshape"), None)
            shape5 = topo.shapes.get(reshape.output[0]) if reshape is not None else None
            if not shape5 or len(shape5) != 5 or not _is_grid(topo.shapes[t], info.imgsz):
                continue
            na, no = shape5[1], shape5[2]
            anchors = _anchor_grid(topo, reshape.output[0], na)
            if anchors is None or no < 6:
                continue
            levels.append((topo.shapes[t][2], t, anchors, no))
    if not levels:
        return None
    levels.sort(key=lambda lv: -lv[0])
    nc = levels[0][3] - 5
    if info.names and len(info.names) != nc:
        raise _not_found(topo, f"anchor head has {nc} classes but metadata names {len(info.names)}")
    na = len(levels[0][2])
    split = all(_splittable_conv(topo, t, na * no) for _, t, _, no in levels)
    endpoints: list[Endpoint] = []
    for i, (h, t, _, no) in enumerate(levels):
        shape = topo.shapes[t]
        stride = info.imgsz[0] // h
        if not split:
            endpoints.append(Endpoint(t, "detection", f"detection_{i}", shape, stride, i))
            continue
        # channel a*no + k: k 0-3 box logits (xy, wh), 4 objectness, 5.. classes; anchor-major
        for kind, ks in (("boxes", range(4)), ("objectness", range(4, 5)), ("scores", range(5, no))):
            ch = tuple(a * no + k for a in range(na) for k in ks)
            endpoints.append(Endpoint(t, kind, f"{kind}_{i}", (shape[0], len(ch), *shape[2:]), stride, i, ch))
    return HeadSpec(
        family="yolov5",
        task="detect",
        nc=nc,
        reg_max=0,
        strides=tuple(info.imgsz[0] // h for h, _, _, _ in levels),
        endpoints=_sort(endpoints),
        anchors=tuple(a for _, _, a, _ in levels),
    )


def apply_split_hints(head: HeadSpec, hints: list[dict[str, Any]]) -> HeadSpec:
    """Check EdgeFirst ``split_hints`` against the discovered head and adopt their names.

    A ``quantization_split`` hint's strides must equal the head's, and its boundaries
    (post-DFL channel ranges of the target output) must cover boxes/scores/mask_coefs with the
    channel counts the head actually has. Unknown hint types are ignored, as EdgeFirst does.
    """
    split = [h for h in hints if h.get("type") == "quantization_split"]
    if not split:
        return head
    hint = split[0]
    strides = tuple(hint.get("strides") or ())
    if strides and strides != head.strides:
        raise HeadNotFoundError(f"split_hints strides {list(strides)} differ from the model's {list(head.strides)}")
    widths = {"boxes": 4, "scores": head.nc, "mask_coefs": head.nm}
    rename: dict[str, str] = {}
    for b in hint.get("boundaries", []):
        lo, hi = b["channels"]
        kind = next((k for k, w in widths.items() if k in b["name"] or (w == hi - lo and k != "boxes")), None)
        if kind is None or widths[kind] != hi - lo:
            raise HeadNotFoundError(
                f"split_hints boundary {b['name']!r} {b['channels']} matches no head branch "
                f"(boxes 4, scores {head.nc}, mask_coefs {head.nm} channels)"
            )
        rename[kind] = b["name"]
    endpoints = tuple(
        replace(e, name=f"{rename[e.kind]}_{e.scale_index}") if e.kind in rename else e for e in head.endpoints
    )
    return replace(head, endpoints=endpoints)
