#!/usr/bin/env python3
"""Family matrix: every Ultralytics fixture and real model through ``edgeq convert`` with defaults.

One row per model: the family that claims it, whether it converts with default settings (and if
not, the error's first line), conversion time, the guard's verdict, whether ``edgeq predict`` runs
on the artifact, and per-output SQNR of the artifact against the float cut graph on 8 coco-val-dev
images (the lowest output and which one; score logits count from logit(1e-4) up, as edgeq floors
them). Fixtures have random weights (see
``shared/data/fixtures/README.md``): they show that a family and export layout converts and keeps
its float function, never accuracy; task metrics of the real models come from ``edgeq validate``.

    python bench/families.py                       # all 26 fixtures + the real models
    python bench/families.py --only yolo11 --calib-count 50
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import _common as C

REAL = ["yolov8n", "yolov8n-seg", "yolov5n", "yolo11n", "yolo11n-seg", "yolo11n-pose", "yolo26n", "yolox_nano"]


def _output_sqnr(model: Path, artifact: Path, images: list[Path]) -> dict[str, float]:
    """Per artifact output: SQNR (dB) of its dequantized values against the float cut graph."""
    from edgeq.calib.dataset import calibration_set
    from edgeq.export.tflite.probe import ArtifactProbe
    from edgeq.meta.embed import zip_start
    from edgeq.meta.read import read_meta
    from edgeq.prepare import prepare_as_recorded
    from edgeq.quant.observe import FloatProbe

    meta = read_meta(artifact)
    prep = prepare_as_recorded(model, meta.edgeq, artifact)
    data = artifact.read_bytes()
    buf = data[: zip_start(data)]
    names = [o.name for o in prep.graph.graph.output]
    layouts = _layouts(buf, names)
    probe = ArtifactProbe(buf, layouts)
    floats = FloatProbe(prep.graph, names)
    cs = calibration_set(images[0].parent, count=len(images))
    from dataclasses import replace

    cs = replace(cs, input_convention=prep.input_convention,
                 preprocessing=meta.raw.get("validation", {}).get("preprocessing", "letterbox"))
    from edgeq.calib.ranges import LOGIT_FLOOR

    # score logits below logit(1e-4) never pass a threshold: the planner floors them, so they
    # count from the floor up (as the guard and the sensitivity measure them)
    floored = prep.head.score_logits() if prep.head is not None else set()
    sums: dict[str, list[float]] = {n: [0.0, 0.0] for n in names}
    for rgb in cs.images(prep.loaded.info.imgsz):
        probe.run(rgb)
        ref = floats.run(rgb)
        for n in names:
            f, q = ref[n].astype(np.float64), probe.value(n).astype(np.float64)
            if n in floored:
                f, q = np.maximum(f, LOGIT_FLOOR), np.maximum(q, LOGIT_FLOOR)
            sums[n][0] += float(np.sum((f - q) ** 2))
            sums[n][1] += float(np.sum(f * f))
    return {n: (float("inf") if e == 0 else 10 * np.log10(max(s, 1e-30) / e)) for n, (e, s) in sums.items()}


def _layouts(buffer: bytes, names: list[str]) -> dict[str, tuple[int, ...]]:
    """ONNX -> stored axis order of each output (NHWC for 4-D), read off the artifact's shapes."""
    import tflite

    model = tflite.Model.GetRootAsModel(buffer, 0)
    sg = model.Subgraphs(0)
    out = {}
    for i in range(sg.OutputsLength()):
        t = sg.Tensors(sg.Outputs(i))
        name = t.Name().decode()
        rank = t.ShapeLength()
        out[name] = (0, 2, 3, 1) if rank == 4 else tuple(range(rank))
    return {n: out[n] for n in names if n in out}


def _row(model: Path, calib: Path, images: list[Path], count: int | None, out_dir: Path) -> dict:
    from edgeq.config import ConvertConfig
    from edgeq.errors import EdgeqError
    from edgeq.families import discover_head
    from edgeq.graph.load import load_model
    from edgeq.pipeline import convert
    from edgeq.runtime import load

    row: dict = {"model": model.stem}
    try:
        m = load_model(model)
        row["family"] = discover_head(m.model, m.info).family
    except EdgeqError as e:
        row.update(family="-", converts="no", error=e.what.splitlines()[0][:120])
        return row
    art = out_dir / f"{model.stem}.tflite"
    t0 = time.perf_counter()
    try:
        res = convert(model, calib, art, ConvertConfig(calib_count=count), progress=False)
    except EdgeqError as e:
        row.update(converts="no", error=e.what.splitlines()[0][:160], seconds=round(time.perf_counter() - t0, 1))
        return row
    except Exception as e:  # an internal error is a finding, not a crash of the bench
        row.update(converts="no", error=f"internal: {type(e).__name__}: {e}"[:160], trace=traceback.format_exc(limit=3))
        return row
    row.update(converts="yes", seconds=round(time.perf_counter() - t0, 1), guard=res.meta.edgeq.get("guard", {}).get("status", "-"))
    try:
        dets = load(art).predict(images[0])
        row["predict"] = f"ok ({len(dets)} det)" if dets.probs is None else "ok (top-5)"
    except Exception as e:
        row["predict"] = f"fails: {type(e).__name__}: {e}"[:100]
    try:
        sq = _output_sqnr(model, art, images)
        worst = min(sq, key=sq.get)
        row.update(min_sqnr_db=round(sq[worst], 1), min_output=worst, sqnr_db={k: round(v, 1) for k, v in sq.items()})
    except Exception as e:
        row["min_sqnr_db"] = f"n/a ({type(e).__name__}: {e})"[:80]
    return row


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="substring a model name must contain")
    p.add_argument("--calib-count", type=int, default=None, help="calibration images (default: all 200)")
    p.add_argument("--no-real", action="store_true", help="fixtures only")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args()
    shared = C.check_shared(args.shared, "fixtures/ultralytics", "coco-calib", "coco-val-dev")
    models = sorted((shared / "fixtures" / "ultralytics").glob("*.onnx"))
    if not args.no_real:
        models += [shared / "models" / f"{m}.onnx" for m in REAL]
    models = [m for m in models if args.only in m.stem]
    images = sorted((shared / "coco-val-dev" / "images").glob("*.jpg"))[:8]
    out_dir = C.REPO / "out" / "bench" / "families"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in models:
        print(f"{m.stem} ...", flush=True)
        rows.append(_row(m, shared / "coco-calib", images, args.calib_count, out_dir))
        r = rows[-1]
        print(f"  {r.get('family')} converts={r.get('converts')} {r.get('seconds', '')} s guard={r.get('guard', '-')} "
              f"predict={r.get('predict', '-')} min SQNR={r.get('min_sqnr_db', '-')} ({r.get('min_output', '')}) {r.get('error', '')}",
              flush=True)
    print("\n| model | family | converts | s | guard | predict | lowest output SQNR (dB) | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r.get('family', '-')} | {r.get('converts')} | {r.get('seconds', '')} | {r.get('guard', '-')} | "
              f"{r.get('predict', '-')} | {r.get('min_sqnr_db', '-')} {r.get('min_output', '')} | {r.get('error', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r.get("converts") == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
