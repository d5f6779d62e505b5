"""YOLOv5 per-scale anchor decoding equals the float model's own in-graph decode."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from conftest import shared_path
from edgeq.calib.preprocess import letterbox, read_image, to_nchw_float
from edgeq.graph.cut import cut_at_head
from edgeq.graph.heads import discover_head
from edgeq.graph.load import load_model
from edgeq.meta.build import anchor_outputs, build_meta
from edgeq.runtime.decode import Decoder


class _T:  # a float "artifact tensor" for the metadata builder
    def __init__(self, name, shape):
        self.name, self.shape, self.dtype, self.scale, self.zero_point = name, shape, "float32", 1.0, 0


def test_anchor_decoder_matches_in_graph_decode(val_dev):
    m = load_model(shared_path("models", "yolov5n.onnx"))
    head = discover_head(m.model, m.info)
    cut = cut_at_head(m.model, head)
    full = ort.InferenceSession(m.model.SerializeToString(), providers=["CPUExecutionProvider"])
    part = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = [_T(e.name, tuple(e.shape)) for e in head.endpoints]
    meta = build_meta(m.info, anchor_outputs(head, tensors, layout="nchw"), _T("images", (1, 640, 640, 3)), {}, name="v5", decoder_version="yolov5")
    dec = Decoder(meta)
    for path in sorted((val_dev / "images").glob("*.jpg"))[:3]:
        x = to_nchw_float(letterbox(read_image(path), (640, 640))[0])
        ref = full.run(None, {"images": x})[0][0]  # (25200, 85): cx, cy, w, h px, obj, cls
        raw = dict(zip([e.name for e in head.endpoints], part.run(None, {"images": x})))
        got = dec.decode(raw, conf=0.25, iou=0.6)
        score = ref[:, 4:5] * ref[:, 5:]
        best = score.max(1)
        assert len(got.scores) > 0
        for box, s, c in zip(got.boxes, got.scores, got.class_ids):
            i = int(np.argmin(np.abs(best - s) + (score.argmax(1) != c)))  # same score and class
            cx, cy, w, h = ref[i, :4]
            np.testing.assert_allclose(box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=0.05)
            assert abs(best[i] - s) < 1e-5
