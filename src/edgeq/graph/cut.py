"""Cut a graph at the head endpoints: each endpoint becomes its own output, the tail is dropped."""
from __future__ import annotations

import onnx
from onnx import helper

from edgeq.graph.heads import HeadSpec
from edgeq.graph.topology import Topology


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t == old:
                node.input[i] = new
        for i, t in enumerate(node.output):
            if t == old:
                node.output[i] = new


def cut_at_head(model: onnx.ModelProto, head: HeadSpec) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the head endpoints, named as the endpoints are.

    Everything the endpoints do not depend on (the decode tail: concat, DFL, dist2bbox,
    sigmoid) is removed, along with initializers that only the tail used.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    topo = Topology.of(out)
    keep = topo.ancestors([e.tensor for e in head.endpoints])
    del g.node[:]
    g.node.extend(keep)
    used = {t for n in keep for t in n.input}
    kept_init = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_init)
    del g.output[:]
    for e in head.endpoints:
        if e.tensor != e.name:
            _rename(g, e.tensor, e.name)
        g.output.append(helper.make_tensor_value_info(e.name, onnx.TensorProto.FLOAT, list(e.shape)))
    produced = {t for n in keep for t in n.output}
    vis = [v for v in g.value_info if v.name in produced and v.name not in {e.name for e in head.endpoints}]
    del g.value_info[:]
    g.value_info.extend(vis)
    return out
