"""The head of a model as typed data (``HeadSpec``, ``Endpoint``) and the structural helpers that
every family's discovery uses. Discovery itself is per family (:mod:`edgeq.families`).

Finding a head's per-scale endpoints goes by graph structure, not by node names.

An Ultralytics export ends in a *decode tail*: per-scale 4-D head tensors are reshaped to
rank 3 (YOLOv8/11: ``[1, C, H*W]``) or rank 5 (YOLOv5: ``[1, na, no, H, W]``), concatenated,
and decoded (DFL softmax, dist2bbox, sigmoid). The endpoints are the 4-D tensors right before
that first rank change, with channel-wise Concats unpacked into their inputs. The DFL is
recognised by its fixed ``arange(reg_max)`` 1x1 Conv after a Softmax, which gives ``reg_max``;
endpoints are then typed by channel count and concat order.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import onnx

from edgeq.errors import HeadNotFoundError
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

    family: str  # a name in edgeq.families.FAMILIES: "yolov8" (DFL heads: YOLOv8, YOLO11) | "yolov5"
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


def tail_inputs(topo: Topology, output: str) -> list[str]:
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


def grid_inputs(topo: Topology, starts: Iterable[str], imgsz: tuple[int, int], *, unpack: bool = True) -> list[str]:
    """Per-scale 4-D grids ``[1, C, H, W]`` that a decode tail flattens on the way to ``starts``.

    Walks back to every Reshape of a grid (H and W divide the input with one stride) to another
    rank, through the other rank changes on the way (the DFL's own reshapes, whose 4-D shapes are
    no grid): Ultralytics 8.3 flattens one box+class Concat per level, 8.4 each branch apart.
    ``unpack``: channel Concats are replaced by their inputs.
    """
    found: list[str] = []
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = topo.producer.get(t)
        if node is None:
            continue
        src = node.input[0] if node.input else ""
        shape = topo.shapes.get(src)
        if (node.op_type == "Reshape" and shape is not None and len(shape) == 4
                and topo.rank(node.output[0]) != 4 and is_grid(shape, imgsz)):
            found.extend(p for p in (unpack_concat(topo, src) if unpack else [src]) if p not in found)
            continue
        stack.extend(i for i in node.input if i and i not in topo.constants)
    return found


def producer_through(topo: Topology, tensor: str, skip: tuple[str, ...] = ("Identity", "Cast")) -> onnx.NodeProto | None:
    """The node computing ``tensor``, looking through value-preserving ops (``skip``)."""
    node = topo.producer.get(tensor)
    while node is not None and node.op_type in skip:
        node = topo.producer.get(node.input[0])
    return node


def unpack_concat(topo: Topology, tensor: str) -> list[str]:
    """Split a channel Concat into its inputs, recursively; other tensors stay as they are."""
    node = topo.producer.get(tensor)
    if node is not None and node.op_type == "Concat":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis in (1, -3):
            return [t for i in node.input for t in unpack_concat(topo, i)]
    return [tensor]


def not_found(topo: Topology, reason: str) -> HeadNotFoundError:
    outs = ", ".join(f"{o.name} {list(topo.shapes.get(o.name, ()))}" for o in topo.graph.output)
    return HeadNotFoundError(
        f"no known YOLO detect/segment head found: {reason} (graph outputs: {outs})",
        "use `--split combined`, which quantizes any model without cutting it, or give EdgeFirst "
        "`split_hints` with `--split-hints FILE`",
    )


def is_grid(shape: tuple[int, ...], imgsz: tuple[int, int]) -> bool:
    """A per-scale feature map: its H and W divide the input with one common stride."""
    _, _, h, w = shape
    return imgsz[0] % h == 0 and imgsz[1] % w == 0 and imgsz[0] // h == imgsz[1] // w


def sort_endpoints(endpoints: list[Endpoint]) -> tuple[Endpoint, ...]:
    order = {"detection": 0, "boxes": 0, "objectness": 1, "scores": 2, "mask_coefs": 3, "protos": 4}
    return tuple(sorted(endpoints, key=lambda e: (order[e.kind], e.scale_index or 0)))


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
