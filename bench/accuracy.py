#!/usr/bin/env python3
"""Accuracy benchmark: float vs combined INT8 vs smart INT8 (vs smart + int16 budget).

For each shared model and each shared validation set, prints box mAP50-95 / mAP50 (and mask for
segmentation), the drop against the float model, and the conversion time. One calibration pass
serves every variant built from the same graph, so the whole run fits in ~20 minutes on 2 cores.

    python bench/accuracy.py                      # all models, dev + person sets
    python bench/accuracy.py --models yolov8n --sets dev --calib-count 100
    python bench/accuracy.py --attribute          # + where the smart drop comes from (~+6 min)

``--attribute`` adds a row per model and set: the float graph with only the smart artifact's
*output* rounding (:mod:`edgeq.eval.attribution`), so the smart drop splits into what the outputs'
own int8 steps cost and what the int8 activations and weights inside the graph cost.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SETS = {"dev": "coco-val-dev", "person": "coco-person-dev"}
MODELS = ["yolov8n", "yolov8n-seg", "yolov5n"]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model stems under models/")
    p.add_argument("--sets", default="dev,person", help="validation sets: dev, person")
    p.add_argument("--calib-count", type=int, default=200)
    p.add_argument("--int16-budget", type=float, default=5.0, help="budget for the smart+int16 variant (percent)")
    p.add_argument("--json", type=Path, help="also write all rows as JSON")
    p.add_argument("--attribute", action="store_true",
                   help="also validate the float graph with only the smart artifact's output rounding")
    return p.parse_args()


def _variants(int16_budget: float) -> list[tuple[str, dict]]:
    from edgeq.config import ConvertConfig

    variants = [("combined", {"split": "combined"}), ("smart", {"split": "smart"})]
    if "int16_budget" in {f.name for f in dataclasses.fields(ConvertConfig)}:
        variants.append((f"smart+int16 {int16_budget:g}%", {"split": "smart", "int16_budget": int16_budget}))
    return variants


def _validate(model_path: Path, data_dir: Path, source: Path | None = None) -> dict:
    """mAP of an artifact or ONNX model (``source``: the float graph with only the artifact's output rounding)."""
    from edgeq.eval import validate
    from edgeq.eval.attribution import output_rounding_model
    from edgeq.runtime import load

    model = load(model_path) if source is None else output_rounding_model(model_path, source)
    iou = 0.6 if model.meta.decoder_version == "yolov5" else 0.7  # each family's own `val` default
    r = validate(model, data_dir / "instances.json", data_dir / "images", iou=iou, progress=False)
    out = {}
    for t in ("bbox", "segm"):
        if t in r.metrics:
            out[t] = (r.metric("mAP50-95", t), r.metric("mAP50", t))
    return out


def _convert_variants(model: Path, calib: Path, count: int, int16_budget: float, out_dir: Path, console: Console) -> dict:
    """Build each INT8 variant; returns name -> (artifact path or error, seconds)."""
    from edgeq.calib.dataset import calibration_set
    from edgeq.config import ConvertConfig
    from edgeq.errors import EdgeqError
    from edgeq.pipeline import calibrate, export_artifact, prepare, round_weights

    calib_set = calibration_set(calib, count=count)
    results, cache = {}, {}
    for name, overrides in _variants(int16_budget):
        cfg = ConvertConfig(**overrides)
        t0 = time.perf_counter()
        try:
            if cfg.split not in cache:
                prep = round_weights(prepare(model, cfg), calib_set, cfg)
                hists = calibrate(prep.graph, calib_set, prep.loaded.info.imgsz, cfg, progress=False)
                cache[cfg.split] = (prep, hists, time.perf_counter() - t0)
            prep, hists, calib_s = cache[cfg.split]
            t1 = time.perf_counter()
            out = out_dir / f"{model.stem}-{name.split()[0]}.tflite"
            export_artifact(prep, hists, calib_set, out, cfg)
            results[name] = (out, calib_s + time.perf_counter() - t1)
        except EdgeqError as e:
            results[name] = (f"n/a: {e.what.splitlines()[0][:90]}", time.perf_counter() - t0)
        console.print(f"  {model.stem} {name}: {results[name][1]:.1f} s")
    return results


def main() -> int:
    a = _args()
    console = Console(stderr=True)
    if not a.shared.is_dir():
        console.print(f"[red]shared data not found: {a.shared}[/] (pass --shared PATH)")
        return 2
    sets = {s: a.shared / SETS[s] for s in a.sets.split(",") if (a.shared / SETS[s]).is_dir()}
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeq-acc-") as tmp:
        for stem in a.models.split(","):
            model = a.shared / "models" / f"{stem}.onnx"
            if not model.is_file():
                console.print(f"[yellow]skip {stem}: {model} not found[/]")
                continue
            built = _convert_variants(model, a.shared / "coco-calib", a.calib_count, a.int16_budget, Path(tmp), console)
            for set_name, set_dir in sets.items():
                ref = _validate(model, set_dir)
                rows.append(dict(model=stem, variant="float", set=set_name, seconds=None, **{k: v for k, v in ref.items()}))
                for name, (art, secs) in built.items():
                    row = dict(model=stem, variant=name, set=set_name, seconds=secs)
                    if isinstance(art, Path):
                        row.update(_validate(art, set_dir))
                        row["drop"] = {t: ref[t][0] - row[t][0] for t in ref if t in row}
                    else:
                        row["error"] = art
                    rows.append(row)
                    if a.attribute and name == "smart" and isinstance(art, Path):
                        row = dict(model=stem, variant="smart, outputs only", set=set_name, seconds=None)
                        row.update(_validate(art, set_dir, source=model))
                        row["drop"] = {t: ref[t][0] - row[t][0] for t in ref if t in row}
                        rows.append(row)
                console.print(f"  validated {stem} on {set_name}")
    _print(rows, time.perf_counter() - t_start)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _fmt(row: dict, t: str) -> tuple[str, str, str]:
    if t not in row:
        return "", "", ""
    m, m50 = row[t]
    drop = row.get("drop", {}).get(t)
    return f"{m:.4f}", f"{m50:.4f}", "" if drop is None else f"{-drop:+.4f}"


def _print(rows: list[dict], total_s: float) -> None:
    t = Table(title=f"edgeq accuracy (COCO mAP, conf 0.001, iou 0.7; yolov5 0.6) — total {total_s / 60:.1f} min")
    for col in ("model", "set", "variant", "box mAP50-95", "box mAP50", "box Δ", "mask mAP50-95", "mask mAP50", "mask Δ", "convert s"):
        t.add_column(col, justify="right" if col not in ("model", "set", "variant") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["set"], r["variant"], r["error"], *[""] * 6)
            continue
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        t.add_row(r["model"], r["set"], r["variant"], *_fmt(r, "bbox"), *_fmt(r, "segm"), secs)
    Console(width=160).print(t)


if __name__ == "__main__":
    sys.exit(main())
