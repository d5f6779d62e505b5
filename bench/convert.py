"""``edgeq convert`` vs the upstream path (onnx2tf + TensorFlow), same calibration images, same machine.

Upstream here is what Ultralytics' own TFLite INT8 export runs: the ONNX graph with its boxes
divided by the input size (so boxes and class scores can share one int8 scale; edgeq's
``normalize_boxes`` pass does exactly that division), simplified with onnxslim (as Ultralytics'
ONNX export does; unsimplified, the Split sizes stay Constant nodes and onnx2tf emits FlexSplitV,
which LiteRT's builtin interpreter cannot run), then ``onnx2tf -oiqt`` (TensorFlow's
TFLiteConverter with full-integer quantization), calibrated with the same letterboxed coco-calib
images edgeq uses, passed as a float32 [0, 1] NHWC array (``-cind images calib.npy 0 1``).
The upstream tools live in their own virtualenv, ``bench/.venv-onnx2tf`` (created and filled from
PyPI on first run; about 2.6 GB), so they never touch edgeq's environment.

onnx2tf loads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from its working directory
and, when the file is missing, downloads it from the internet to check its outputs (even with
``-cind``). The script writes that file itself (20 of the calibration images, 128x128, [0, 1]),
so the run is offline.

Each conversion is one subprocess: wall time and peak RSS (``os.wait4``). Then both artifacts are
validated on coco-val-dev with ``edgeq.eval.validate`` (conf 0.001, IoU 0.7, multi-label); the
onnx2tf artifact carries no edgefirst.json, so it is described by a synthesized ``ModelMeta``
(one ``[1, 84, 8400]`` detection output, boxes normalized).

    python bench/convert.py [--shared ../shared/data] [--calib-count 200]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

VENV = Path(__file__).resolve().parent / ".venv-onnx2tf"
# A set pip resolves on Python 3.11 (onnx2tf pins its own TensorFlow range); pinned for repeatability.
UPSTREAM = ["onnx2tf==1.29.24", "tensorflow==2.19.0", "tf_keras==2.19.0"]
SAMPLE_NPY = "calibration_image_sample_data_20x128x128x3_float32.npy"


def setup_upstream(log: Path) -> tuple[Path | None, str]:
    """The venv's onnx2tf executable (installing it on first use), or None and why not."""
    exe = VENV / "bin" / "onnx2tf"
    if exe.is_file():
        return exe, "existing " + str(VENV.relative_to(C.REPO))
    print(f"installing {' '.join(UPSTREAM)} into {VENV.relative_to(C.REPO)} (first run; several minutes) ...", flush=True)
    with open(log, "w") as f:
        for cmd in ([sys.executable, "-m", "venv", str(VENV)], [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *UPSTREAM]):
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
            if r.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                return None, f"`{' '.join(cmd[:4])} ...` failed (exit {r.returncode}): {' | '.join(tail)}"
    return (exe, "installed now") if exe.is_file() else (None, "pip finished but installed no onnx2tf executable")


def upstream_inputs(shared: Path, model: str, count: int, work: Path) -> tuple[Path, Path]:
    """(box-normalized ONNX, calibration .npy) in ``work``, plus onnx2tf's sample array."""
    import cv2
    import onnx
    import onnxslim

    from edgeq.calib.dataset import calibration_set
    from edgeq.graph.passes.normalize_boxes import normalize_boxes

    m = onnx.load(str(shared / "models" / f"{model}.onnx"))
    h, w = (int(d.dim_value) for d in m.graph.input[0].type.tensor_type.shape.dim[2:4])
    if not normalize_boxes(m, (h, w)):
        raise SystemExit(f"error: could not find the box-decoding Mul of {model}.onnx to normalize its boxes")
    # Ultralytics simplifies its ONNX export with onnxslim; without it the Split sizes stay Constant
    # nodes and onnx2tf emits FlexSplitV, which LiteRT's builtin interpreter cannot run.
    m = onnxslim.slim(m)
    onnx_path = work / f"{model}-normboxes.onnx"
    onnx.save(m, str(onnx_path))
    calib = calibration_set(shared / "coco-calib", count=count)  # the very images and order edgeq uses
    npy = work / "calib.npy"
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(len(calib), h, w, 3))
    for i, rgb in enumerate(calib.images((h, w))):
        arr[i] = rgb.astype(np.float32) / 255
    small = np.stack([cv2.resize(np.asarray(arr[i]), (128, 128), interpolation=cv2.INTER_AREA) for i in range(min(20, len(calib)))])
    if small.shape[0] < 20:  # onnx2tf slices [:batch]; keep the documented 20 images
        small = np.concatenate([small] * (20 // small.shape[0] + 1))[:20]
    np.save(work / SAMPLE_NPY, small.astype(np.float32))
    arr.flush()
    del arr
    return onnx_path, npy


def upstream_meta(shared: Path, model: str, artifact: Path):
    """A ModelMeta for the onnx2tf artifact: the ONNX's Ultralytics metadata + the TFLite tensors."""
    import onnx

    from edgeq.meta.read import synthesize_ultralytics, tflite_tensors

    props = {p.key: p.value for p in onnx.load(str(shared / "models" / f"{model}.onnx"), load_external_data=False).metadata_props}
    inputs, outputs = tflite_tensors(artifact)
    return synthesize_ultralytics(props, inputs, outputs, artifact, layout="nhwc")


def evaluate(shared: Path, path: Path, meta, max_images: int | None):
    from edgeq import eval as ev
    from edgeq.runtime import load

    model = load(path, threads=2, meta=meta)
    data = shared / "coco-val-dev" / "instances.json"
    return ev.validate(model, data, shared / "coco-val-dev" / "images", max_images=max_images, progress=False)


def main() -> None:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="yolov8n", help="model under models/ (a YOLOv8 detect export)")
    p.add_argument("--calib-count", type=int, default=200, help="calibration images (the first N of coco-calib)")
    p.add_argument("--quant-type", choices=["per-channel", "per-tensor"], default="per-channel",
                   help="onnx2tf weight quantization (per-channel matches edgeq; Ultralytics' export uses per-tensor)")
    p.add_argument("--max-images", type=int, default=None, help="validate on the first N coco-val-dev images only")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder (artifacts, logs) here")
    p.add_argument("--skip-upstream", action="store_true", help="measure edgeq only")
    args = p.parse_args()
    shared = C.check_shared(args.shared, "coco-calib", "coco-val-dev", f"models/{args.model}.onnx")
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="edgeq-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[list] = []
    notes: list[str] = []
    try:
        print(f"machine: {C.machine_note()}", flush=True)
        # ---- edgeq
        ours = work / f"{args.model}-edgeq-smart-int8.tflite"
        cmd = [*C.edgeq_cli(), "convert", str(shared / "models" / f"{args.model}.onnx"), "--calib", str(shared / "coco-calib"),
               "--calib-count", str(args.calib_count), "-o", str(ours), "-q"]
        print(f"edgeq convert ({args.calib_count} calibration images) ...", flush=True)
        r = C.run_child(cmd, log=work / "edgeq.log")
        if r.returncode != 0:
            print(r.output)
            sys.exit(f"error: edgeq convert failed (exit {r.returncode})")
        results = {"edgeq convert (smart)": (r, ours, None)}
        # ---- upstream
        if args.skip_upstream:
            notes.append("upstream skipped (--skip-upstream)")
        else:
            exe, how = setup_upstream(work / "pip.log")
            if exe is None:
                notes.append(f"upstream not run: could not install onnx2tf + TensorFlow: {how}")
            else:
                print(f"onnx2tf: {how}; preparing inputs ...", flush=True)
                onnx_path, npy = upstream_inputs(shared, args.model, args.calib_count, work)
                out_dir = work / "onnx2tf"
                cmd = [str(exe), "-i", str(onnx_path), "-o", str(out_dir), "-oiqt", "-qt", args.quant_type,
                       "-cind", "images", str(npy), "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]", "-n"]
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
                print(f"onnx2tf -oiqt ({args.calib_count} calibration images, {args.quant_type}) ...", flush=True)
                u = C.run_child(cmd, cwd=work, env=env, log=work / "onnx2tf.log")
                found = sorted(out_dir.glob("*_full_integer_quant.tflite")) if out_dir.is_dir() else []
                if u.returncode != 0 or not found:
                    tail = " | ".join(u.output.strip().splitlines()[-4:])
                    notes.append(f"onnx2tf failed (exit {u.returncode}, {u.wall_s:.0f} s, peak {u.peak_rss_mib:.0f} MiB): {tail}")
                else:
                    art = found[0]
                    results[f"onnx2tf {args.quant_type} (full integer)"] = (u, art, upstream_meta(shared, args.model, art))
                    made = sorted(q.name for q in out_dir.glob("*.tflite"))
                    notes.append(f"onnx2tf wrote {len(made)} .tflite files in that one run ({', '.join(made)}); the time covers all of them")
        # ---- accuracy
        for label, (run, art, meta) in results.items():
            print(f"validating {label} on coco-val-dev ...", flush=True)
            res = evaluate(shared, art, meta, args.max_images)
            box = res.metrics["bbox"]
            rows.append([label, f"{run.wall_s:.1f}", f"{run.peak_rss_mib:.0f}", f"{art.stat().st_size / 1e6:.2f}",
                         f"{box['mAP50-95']:.3f}" if box.get('mAP50-95') is not None else '-', f"{box['mAP50']:.3f}" if box.get('mAP50') is not None else '-'])
        C.table(
            f"{args.model}: conversion with {args.calib_count} calibration images, one run each; mAP on coco-val-dev ({args.max_images or 69} images)",
            ["converter", "wall s", "peak RSS MiB", "artifact MB", "mAP50-95", "mAP50"],
            rows,
        )
        print(f"machine after: {C.machine_note()}")
        runs = [run for run, _, _ in results.values()]
        if len(runs) == 2:
            ours_s, theirs_s = runs[0].wall_s, runs[1].wall_s
            print(f"edgeq vs onnx2tf wall time, same run: {ours_s:.1f} s vs {theirs_s:.1f} s = {theirs_s / ours_s:.1f}x faster"
                  f" (targets: edgeq < 60 s, >= 10x)")
        for n in notes:
            print(f"note: {n}")
        if args.keep:
            print(f"artifacts and logs kept in {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
