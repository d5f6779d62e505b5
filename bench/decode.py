"""Decode + NMS latency: edgeq's decoder vs EdgeFirst HAL's, on the same raw int8 outputs.

For each artifact the interpreter runs once per image (coco-val-dev) and its raw int8 outputs
are stored; then both decoders are timed on exactly those arrays, interleaved image by image, at
conf 0.25 (deployment) and 0.001 (validation). Settings are identical on both sides: NMS IoU
0.7, class-aware NMS, single label per anchor, at most 300 detections, and HAL's
``pre_nms_top_k`` raised to the anchor count so neither side drops candidates before NMS.

* edgeq: ``Model.decoder.decode(raw, ...)``: integer-domain threshold, DFL/box decode of the
  candidates, NMS, mask-coefficient gather (no mask assembly).
* HAL: ``Decoder.new_from_json_str(edgefirst.json).decode_proto(tensors)``: boxes, scores, classes
  and the proto data, without materializing masks (its ``decode`` would also build masks).

Both must give the same detections: same count per image, and each edgeq box matched to a HAL
box of the same class within 1 px (max coordinate difference, in 640x640 input pixels).

    python bench/decode.py [--shared ../shared/data] [--images 69] [--repeats 10]
"""
from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

CONFS = (0.25, 0.001)
IOU, MAX_DET = 0.7, 300


@dataclass
class Case:
    """Timings and agreement of one (artifact, conf) case."""

    edgeq_ms: list[float] = field(default_factory=list)
    hal_ms: list[float] = field(default_factory=list)
    images: int = 0
    same_count: int = 0
    dets: int = 0
    matched: int = 0
    tied: int = 0
    max_px: float = 0.0


def hal_tensors(hal, outputs: list[np.ndarray], descs) -> list:
    """HAL tensors (plain memory) holding the interpreter's raw outputs, with their quantization."""
    out = []
    for arr, d in zip(outputs, descs):
        t = hal.Tensor(list(arr.shape), dtype=str(arr.dtype), mem=hal.TensorMemory.MEM, name=d.name)
        t.from_numpy(np.ascontiguousarray(arr))
        if d.quant is not None and not isinstance(d.quant.scale, list):
            t.set_quantization_per_tensor(float(d.quant.scale), int(d.quant.zero_point))
        out.append(t)
    return out


def match(
    a_boxes: np.ndarray, a_cls: np.ndarray, a_scores: np.ndarray,
    b_boxes: np.ndarray, b_cls: np.ndarray, b_scores: np.ndarray,
    cand_cls: np.ndarray, cand_scores: np.ndarray,
) -> tuple[int, int, float]:
    """Greedy one-to-one match of boxes a (edgeq) to boxes b (HAL) of the same class.

    Returns (matched within 1 px, unmatched boxes explained by a tie, worst difference in px among
    matched boxes). Int8 scores take few distinct values, so ties are common: (1) two classes of
    one anchor with the same code, where the single-label pick (edgeq: lowest class index) may
    differ, seen as a b box at the same place with the same score but another class; (2) equal
    scores among same-class candidates, where the order NMS visits them (edgeq: anchor order)
    decides which of two overlapping boxes survives. Both are tie-breaking, not decoding errors.
    """
    used = np.zeros(len(b_boxes), bool)
    matched, tied, worst = 0, 0, 0.0
    for box, c, s in zip(a_boxes, a_cls, a_scores):
        cand = np.flatnonzero((b_cls == c) & ~used)
        d = np.inf
        if cand.size:
            diff = np.abs(b_boxes[cand] - box).max(axis=1)
            d = float(diff.min())
        if d <= 1.0:
            used[int(cand[diff.argmin()])] = True
            matched += 1
            worst = max(worst, d)
        else:
            tol = 1e-6 * max(float(s), 1e-6)
            same_place = np.abs(b_boxes - box).max(axis=1) <= 1.0 if len(b_boxes) else np.zeros(0, bool)
            class_tie = bool(np.any(same_place & (b_cls != c) & (np.abs(b_scores - s) <= tol)))
            nms_tie = int(np.sum((cand_cls == c) & (np.abs(cand_scores - s) <= tol))) > 1
            tied += class_tie or nms_tie
    return matched, tied, worst


def bench_artifact(path: Path, images: list[np.ndarray], repeats: int, threads: int) -> dict[float, Case]:
    import edgefirst_hal as hal

    from edgeq.runtime import load

    model = load(path, threads=threads)
    cfg = zipfile.ZipFile(path).read("edgefirst.json").decode()
    in_h, in_w = model.input_hw
    decoders = {}
    for conf in CONFS:
        d = hal.Decoder.new_from_json_str(cfg, score_threshold=conf, iou_threshold=IOU, nms=hal.Nms.ClassAware)
        d.pre_nms_top_k = model.decoder.head.num_anchors if hasattr(model.decoder.head, "num_anchors") else 8400
        d.max_det = MAX_DET
        decoders[conf] = d
    cases = {conf: Case() for conf in CONFS}
    for img in images:
        x, _ = model.preprocess(img)
        raw = model.run(x)  # raw outputs by metadata name, for edgeq
        tensors = hal_tensors(hal, model.backend.run(x), model.backend.outputs)  # the same outputs, in runtime order, for HAL
        for conf in CONFS:
            case, hd = cases[conf], decoders[conf]
            for _ in range(repeats):
                res, ms = C.timed(lambda raw=raw, conf=conf: model.decoder.decode(raw, conf=conf, iou=IOU, max_det=MAX_DET))
                case.edgeq_ms.append(ms)
                hres, ms = C.timed(lambda hd=hd, tensors=tensors: hd.decode_proto(tensors, max_boxes=MAX_DET))
                case.hal_ms.append(ms)
            hb, hs, hc = np.asarray(hres[0], np.float32), np.asarray(hres[1]), np.asarray(hres[2]).astype(np.int64)
            if hd.normalized_boxes or (hd.normalized_boxes is None and hb.size and hb.max() <= 2.0):
                hb = hb * np.array([in_w, in_h, in_w, in_h], np.float32)
            case.images += 1
            case.same_count += len(res.scores) == len(hs)
            case.dets += len(res.scores)
            cand = model.decoder.head.candidates(raw, conf, False)  # pre-NMS candidates, for the tie test
            m, tied, worst = match(res.boxes, res.class_ids, res.scores, hb, hc, hs, cand.class_ids, cand.scores)
            case.matched += m
            case.tied += tied
            case.max_px = max(case.max_px, worst)
    return cases


def main() -> None:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=69, help="coco-val-dev images to decode")
    p.add_argument("--repeats", type=int, default=10, help="timed decode calls per image, per decoder")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (outputs only; decode is single-threaded)")
    p.add_argument("--calib-count", type=int, default=200, help="calibration images for our artifacts")
    p.add_argument("--fresh", action="store_true", help="re-convert our artifacts even when cached in out/bench/")
    args = p.parse_args()
    shared = C.check_shared(args.shared, "coco-val-dev", "coco-calib", "models/yolov8n.onnx", "peers/edgefirst/yolov8n-seg-smart-int8.tflite")
    os.environ.setdefault("EDGEFIRST_TENSOR_FORCE_MEM", "1")
    try:
        import edgefirst_hal  # noqa: F401
    except ImportError:
        sys.exit("error: edgefirst-hal is not installed (pip install edgefirst-hal)")
    from edgeq.calib.preprocess import read_image

    artifacts = {
        "EdgeFirst yolov8n-seg smart (peer)": shared / "peers/edgefirst/yolov8n-seg-smart-int8.tflite",
        "edgeq yolov8n smart": C.artifact(shared, "yolov8n", "smart", args.calib_count, args.fresh),
        "edgeq yolov8n-seg smart": C.artifact(shared, "yolov8n-seg", "smart", args.calib_count, args.fresh),
        "edgeq yolov8n combined": C.artifact(shared, "yolov8n", "combined", args.calib_count, args.fresh),
    }
    images = [read_image(p) for p in C.image_paths(shared / "coco-val-dev", args.images)]
    print(f"machine: {C.machine_note()}", flush=True)
    rows, agree = [], []
    for label, path in artifacts.items():
        print(f"decoding {label}: {len(images)} images x {args.repeats} repeats x {len(CONFS)} thresholds ...", flush=True)
        for conf, c in bench_artifact(path, images, args.repeats, args.threads).items():
            e, h = C.Summary.of(c.edgeq_ms), C.Summary.of(c.hal_ms)
            rows.append([label, conf, f"{e.median:.3f}", f"{e.p90:.3f}", f"{h.median:.3f}", f"{h.p90:.3f}", f"{e.median / h.median:.2f}", f"{c.dets / c.images:.1f}"])
            other = c.dets - c.matched - c.tied
            agree.append([label, conf, f"{c.same_count}/{c.images}", f"{c.matched}/{c.dets}", f"{c.max_px:.3f}", c.tied, other])
    C.table(
        f"decode + NMS latency, ms per call ({len(images)} coco-val-dev images x {args.repeats} repeats; iou {IOU}, class-aware, single label, max_det {MAX_DET})",
        ["artifact", "conf", "edgeq median", "edgeq p90", "HAL median", "HAL p90", "edgeq/HAL", "dets/img"],
        rows,
    )
    C.table(
        "same detections? (count per image; each edgeq box matched to a HAL box of the same class within 1 px;"
        " 'tied': equal int8 scores, broken differently: class pick or NMS order)",
        ["artifact", "conf", "images, equal count", "boxes within 1 px", "worst px (matched)", "unmatched, tied", "unmatched, other"],
        agree,
    )


if __name__ == "__main__":
    main()
