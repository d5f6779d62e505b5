"""Peak RSS and wall time of ``edgeq convert`` (yolov8n, smart) for 50, 200, 500 and 1000 calibration images.

Each conversion is a separate ``python -m edgeq convert`` subprocess; its peak resident set size
is the kernel's ``ru_maxrss`` for that child (``os.wait4``), its wall time the subprocess's.
coco-calib has 200 images; the 500 and 1000 sets repeat them with light deterministic
augmentation (horizontal flip, 0.85-1.15 scale, -20..+20 brightness), written once to a temp
folder (originals first, so ``--calib-count 50/200`` picks the original images). Calibration
streams images one at a time, so memory should stay flat in the number of images: the table
ends with the 1000-vs-50 RSS ratio.

    python bench/memory.py [--shared ../shared/data] [--sizes 50 200 500 1000]
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCALES = (0.85, 0.92, 1.08, 1.15)
BRIGHTNESS = (-20, 10, -10, 20)


def augmented_set(src: list[Path], total: int, out: Path) -> Path:
    """``total`` images in ``out``: the originals (as ``a0_*``), then variants ``a1_*``, ``a2_*`` ..."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    variant = 0
    while n < total:
        for i, p in enumerate(src):
            if n >= total:
                break
            dst = out / f"a{variant}_{p.name}"
            if variant == 0:
                shutil.copyfile(p, dst)
            else:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                k = (variant - 1 + i) % len(SCALES)
                if (variant + i) % 2:
                    img = img[:, ::-1]
                s = SCALES[k]
                img = cv2.resize(img, (max(32, round(img.shape[1] * s)), max(32, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
                img = cv2.convertScaleAbs(img, alpha=1.0, beta=BRIGHTNESS[k])
                cv2.imwrite(str(dst), np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
        variant += 1
    return out


def main() -> None:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500, 1000], help="calibration image counts")
    p.add_argument("--model", default="yolov8n", help="model under models/ (without .onnx)")
    p.add_argument("--keep", type=Path, default=None, help="keep the augmented images and artifacts in this folder")
    args = p.parse_args()
    shared = C.check_shared(args.shared, "coco-calib", f"models/{args.model}.onnx")
    src = C.image_paths(shared / "coco-calib")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgeq-bench-memory-"))
    try:
        need = max(args.sizes)
        print(f"building {need} calibration images from {len(src)} in {work} ...", flush=True)
        calib = augmented_set(src, need, work / "calib")
        print(f"machine: {C.machine_note()}", flush=True)
        rows, rss = [], {}
        for n in args.sizes:
            out = work / f"{args.model}-c{n}.tflite"
            cmd = [*C.edgeq_cli(), "convert", str(shared / "models" / f"{args.model}.onnx"), "--calib", str(calib), "--calib-count", str(n), "-o", str(out), "-q"]
            print(f"converting with {n} images ...", flush=True)
            r = C.run_child(cmd)
            if r.returncode != 0:
                print(r.output)
                sys.exit(f"error: edgeq convert failed with {n} images (exit {r.returncode})")
            rss[n] = r.peak_rss_mib
            rows.append([n, f"{r.wall_s:.1f}", f"{1e3 * r.wall_s / n:.0f}", f"{r.peak_rss_mib:.0f}", f"{out.stat().st_size / 1e6:.2f}"])
        C.table(
            f"edgeq convert {args.model} (smart), one subprocess per row",
            ["calibration images", "wall s", "wall ms / image", "peak RSS MiB", "artifact MB"],
            rows,
        )
        print(f"machine after: {C.machine_note()}")
        lo, hi = min(rss), max(rss)
        print(f"peak RSS {hi} vs {lo} images: {rss[hi]:.0f} / {rss[lo]:.0f} MiB = {rss[hi] / rss[lo]:.3f}x")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
