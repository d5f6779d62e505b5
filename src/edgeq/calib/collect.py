"""Run the float graph over calibration images and stream per-tensor statistics."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx

from edgeq.calib.histogram import NUM_BINS, StreamingHistogram
from edgeq.calib.preprocess import to_nchw_float
from edgeq.graph.session import BoundRunner, activation_names, expose_all, make_session


def collect_histograms(
    model: onnx.ModelProto,
    images: Iterable[np.ndarray],
    *,
    threads: int | None = None,
    bins: int = NUM_BINS,
    names: Sequence[str] | None = None,
) -> dict[str, StreamingHistogram]:
    """Per-tensor streaming histograms over ``images`` (letterboxed RGB uint8 HWC).

    Memory is one image's activations plus a fixed-size histogram per tensor. ``bins=0``
    tracks only min/max, several times faster. ``names``: the tensors to observe (default:
    every activation).
    """
    names = list(names) if names is not None else activation_names(model)
    # a graph input is not a node output: onnxruntime would leave its bound buffer unwritten
    inputs = {i.name for i in model.graph.input}
    computed = [n for n in names if n not in inputs]
    session = make_session(expose_all(model, computed), threads)
    input_name = session.get_inputs()[0].name
    hists = {n: StreamingHistogram(bins) for n in names}
    run = BoundRunner(session, computed)
    for rgb in images:
        x = to_nchw_float(rgb)
        values = run(input_name, x)
        if input_name in hists:
            hists[input_name].update(x)
        for name, value in values.items():
            if value.size:
                hists[name].update(value)
    return {n: h for n, h in hists.items() if h.total}
