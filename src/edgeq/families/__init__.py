"""The head-family registry: one module per family, one line here.

Adding a family: write ``edgeq/families/NAME.py`` with a :class:`HeadFamily` subclass, add it to
:data:`FAMILIES` below, and add its tests (discovery on a graph, metadata round trip, decode).
Order matters only for discovery: the first family whose :meth:`HeadFamily.discover` recognises
a graph takes it.
"""
from __future__ import annotations

from collections.abc import Mapping

import onnx

from edgeq.decode.fields import HeadDecoder
from edgeq.decode.flat import FlatHead
from edgeq.errors import EdgeqError
from edgeq.families.base import HeadFamily
from edgeq.families.classify import Classify
from edgeq.families.obb import OBB
from edgeq.families.pose import Pose
from edgeq.families.semantic import Semantic
from edgeq.families.yolo26 import YOLO26
from edgeq.families.yolov5 import YOLOv5
from edgeq.families.yolov8 import YOLOv8
from edgeq.families.yolox import YOLOX
from edgeq.graph.heads import HeadSpec, not_found
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.schema import ModelMeta, Quant

FAMILIES: Mapping[str, HeadFamily] = {f.name: f for f in (OBB(), Pose(), YOLO26(), YOLOX(), YOLOv8(), YOLOv5(), Classify(), Semantic())}


def get_family(name: str) -> HeadFamily:
    """The registered family ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise EdgeqError(f"unknown head family {name!r}", f"registered families: {', '.join(FAMILIES)}") from None


def discover_head(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec:
    """The head of ``model`` as the first family that recognises it describes it.

    Raises:
        HeadNotFoundError: no family recognises the graph (with what was found).
    """
    for family in FAMILIES.values():
        head = family.discover(model, info)
        if head is not None:
            return head
    raise not_found(Topology.of(model), "no registered head family recognises its outputs "
                    f"(tried {', '.join(f.name for f in FAMILIES.values())})")


def family_for(meta: ModelMeta) -> HeadFamily | None:
    """The family whose decoder reads ``meta``'s outputs (None: the family-neutral flat layout)."""
    return next((f for f in FAMILIES.values() if f.decodes(meta)), None)


def head_decoder(meta: ModelMeta, quant: Mapping[str, Quant | None]) -> HeadDecoder:
    """The head decoder for an artifact's metadata: its family's, else the flat one."""
    family = family_for(meta)
    return family.decoder(meta, quant) if family is not None else FlatHead(meta, quant)


__all__ = ["FAMILIES", "HeadFamily", "discover_head", "family_for", "get_family", "head_decoder"]
