#!/usr/bin/env python3
"""Accuracy benchmark: float vs combined INT8 vs smart INT8 (vs smart + int16 budget).

For each shared model and each shared validation set, prints box mAP50-95 / mAP50 (and mask for
segmentation), the drop against the float model, and the conversion time. One calibration pass
serves every variant built from the same graph, so the whole run fits in ~20 minutes on 2 cores.

    python bench/accuracy.py                      # all models, dev + person sets
    python bench/accuracy.py --models yolov8n --sets dev --calib-count 100
    python bench/accuracy.py --attribute          # + where the smart drop comes from (~+12 min)
    python bench/accuracy.py --ci                 # + 95% paired-bootstrap interval of each drop

``--attribute`` adds rows per model and set (:mod:`edgeq.analysis.attribution`): the float graph with
only the smart artifact's *output* rounding, so the smart drop splits into what the outputs' own
int8 steps cost and what the int8 activations and weights inside the graph cost; then, per head
branch (boxes, scores, objectness, mask_coefs, protos), the artifact with that branch's outputs
taken from the float graph, so the drop splits by branch.

``--ci`` bounds each smart drop by a paired bootstrap over the images (:mod:`edgeq.eval.bootstrap`):
the interval of the drop that resampling the validation images gives, i.e. how much of it the
choice of images alone explains. The float row's interval column then shows the set's resolution
floor (:mod:`edgeq.eval.floor`): the lowest and highest mAP delta of the float model's own
detections jittered by one part in a thousand; drops inside it are flips of near-tied detections.
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
    p.add_argument("--ci", action="store_true",
                   help="bound each smart drop by a 95%% paired bootstrap over the images, and show each set's "
                        "resolution floor on the float row (~+4 min)")
    return p.parse_args()


def _variants(int16_budget: float) -> list[tuple[str, dict]]:
    from edgeq.config import ConvertConfig

    # the combined baseline collapses by design (that is what it shows): write it anyway
    variants = [("combined", {"split": "combined", "on_collapse": "warn"}), ("smart", {"split": "smart"})]
    if "int16_budget" in {f.name for f in dataclasses.fields(ConvertConfig)}:
        variants.append((f"smart+int16 {int16_budget:g}%", {"split": "smart", "int16_budget": int16_budget}))
    return variants


def _validate(model_path: Path, data_dir: Path, source: Path | None = None, keep: bool = False,
              float_kind: str | None = None) -> tuple[dict, object]:
    """mAP of an artifact or ONNX model, and the ValidationResult (with per-image matches when ``keep``).

    With ``source`` (the float ONNX): the float graph with only the artifact's output rounding, or,
    with ``float_kind``, the artifact with that kind of output taken from the float graph.
    """
    from edgeq.eval import validate
    from edgeq.analysis.attribution import float_outputs_model, output_rounding_model
    from edgeq.runtime import load

    if source is None:
        model = load(model_path)
    elif float_kind is None:
        model = output_rounding_model(model_path, source)
    else:
        model = float_outputs_model(model_path, source, float_kind)
    # iou left to the model: the one its file declares (its family's own `val` default)
    r = validate(model, data_dir / "instances.json", data_dir / "images", progress=False, keep_matches=keep)
    out = {}
    for t in ("bbox", "segm"):
        if t in r.metrics:
            out[t] = (r.metric("mAP50-95", t), r.metric("mAP50", t))
    return out, r


def _intervals(ref: object, result: object) -> dict:
    """iou type -> (low, high) of the paired-bootstrap 95 % interval of result - ref."""
    from edgeq.eval.bootstrap import paired_bootstrap

    a, b = ref.matches, result.matches  # type: ignore[attr-defined]
    out = {}
    for t in a.keys() & b.keys():
        i = paired_bootstrap(a[t], b[t])
        out[t] = (i.low, i.high)
    return out


def _floor(ref: object) -> dict:
    """iou type -> (lowest, highest) mAP delta of the float detections jittered imperceptibly."""
    from edgeq.eval.floor import perturbation_floor

    f = perturbation_floor(ref)  # type: ignore[arg-type]
    return {t: (min(d), max(d)) for t, d in f.deltas.items()}


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
                ref, ref_result = _validate(model, set_dir, keep=a.ci)
                rows.append(dict(model=stem, variant="float", set=set_name, seconds=None, **{k: v for k, v in ref.items()}))
                if a.ci:
                    rows[-1]["floor"] = _floor(ref_result)
                for name, (art, secs) in built.items():
                    row = dict(model=stem, variant=name, set=set_name, seconds=secs)
                    if isinstance(art, Path):
                        ci = a.ci and name != "combined"  # combined's drop is far beyond any interval
                        found, result = _validate(art, set_dir, keep=ci)
                        row.update(found)
                        row["drop"] = _drop(ref, row)
                        if ci:
                            row["ci"] = _intervals(ref_result, result)
                    else:
                        row["error"] = art
                    rows.append(row)
                    if a.attribute and name == "smart" and isinstance(art, Path):
                        row = dict(model=stem, variant="smart, outputs only", set=set_name, seconds=None)
                        row.update(_validate(art, set_dir, source=model)[0])
                        row["drop"] = _drop(ref, row)
                        rows.append(row)
                        rows += _branch_rows(stem, set_name, art, set_dir, model, ref)
                console.print(f"  validated {stem} on {set_name}")
    _print(rows, time.perf_counter() - t_start, a.ci)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _drop(ref: dict, row: dict) -> dict:
    """iou type -> float mAP50-95 minus the row's."""
    return {t: ref[t][0] - row[t][0] for t in ref if t in row}


def _branch_rows(stem: str, set_name: str, art: Path, set_dir: Path, model: Path, ref: dict) -> list[dict]:
    """One row per head branch: the smart artifact with that branch's outputs from the float graph."""
    from edgeq.analysis.attribution import output_kinds
    from edgeq.runtime import load

    rows = []
    for kind in output_kinds(load(art)):
        row = dict(model=stem, variant=f"smart, float {kind}", set=set_name, seconds=None)
        row.update(_validate(art, set_dir, source=model, float_kind=kind)[0])
        row["drop"] = _drop(ref, row)
        rows.append(row)
    return rows


def _fmt(row: dict, t: str, ci: bool) -> tuple[str, ...]:
    if t not in row:
        return ("", "", "", "") if ci else ("", "", "")
    m, m50 = row[t]
    drop = row.get("drop", {}).get(t)
    cells = [f"{m:.4f}", f"{m50:.4f}", "" if drop is None else f"{-drop:+.4f}"]
    if ci:
        cells.append(_ci_cell(row, t))
    return tuple(cells)


def _ci_cell(row: dict, t: str) -> str:
    """The float row's resolution floor, or a variant's bootstrap interval."""
    if floor := row.get("floor", {}).get(t):
        return f"floor {floor[0]:+.4f} .. {floor[1]:+.4f}"
    if lo_hi := row.get("ci", {}).get(t):
        return f"[{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}]"
    return ""


def _print(rows: list[dict], total_s: float, ci: bool = False) -> None:
    t = Table(title=f"edgeq accuracy (COCO mAP, conf 0.001, iou as each model declares: 0.7; yolov5 0.6) — total {total_s / 60:.1f} min")
    box = ["box mAP50-95", "box mAP50", "box Δ", *(["box Δ 95% CI"] if ci else [])]
    mask = ["mask mAP50-95", "mask mAP50", "mask Δ", *(["mask Δ 95% CI"] if ci else [])]
    for col in ("model", "set", "variant", *box, *mask, "convert s"):
        t.add_column(col, justify="right" if col not in ("model", "set", "variant") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["set"], r["variant"], r["error"], *[""] * (len(box) + len(mask)))
            continue
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        t.add_row(r["model"], r["set"], r["variant"], *_fmt(r, "bbox", ci), *_fmt(r, "segm", ci), secs)
    Console(width=200).print(t)


if __name__ == "__main__":
    sys.exit(main())
