"""Per-image latency on CPU: our INT8 LiteRT artifacts vs the float ONNX models in onnxruntime.

Every configuration runs ``Model.predict`` on the same coco-val-dev images (after warm-up), at
1 and 2 threads, and reports the runtime's own stage timings separately: preprocess (letterbox +
input encoding), inference (interpreter / session call), decode (threshold + boxes + NMS) and,
for -seg, masks; ``total`` is the wall time of the whole call. Conf 0.25, NMS IoU 0.7.

    python bench/inference.py [--shared ../shared/data] [--images 69] [--runs 69]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def main() -> None:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=69, help="coco-val-dev images to cycle through")
    p.add_argument("--runs", type=int, default=69, help="measured predict() calls per configuration")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", default=["yolov8n", "yolov8n-seg"])
    p.add_argument("--calib-count", type=int, default=200, help="calibration images for our artifacts")
    p.add_argument("--fresh", action="store_true", help="re-convert our artifacts even when cached in out/bench/")
    p.add_argument("--peer", action="store_true", help="also time EdgeFirst's yolov8n-seg smart INT8 file")
    args = p.parse_args()
    shared = C.check_shared(args.shared, "coco-val-dev", "coco-calib", *(f"models/{m}.onnx" for m in args.models))
    from edgeq.calib.preprocess import read_image
    from edgeq.perf.latency import measure_latency

    images = [read_image(q) for q in C.image_paths(shared / "coco-val-dev", args.images)]
    configs: list[tuple[str, str, Path]] = []
    for m in args.models:
        configs.append((m, "INT8 edgeq (LiteRT)", C.artifact(shared, m, "smart", args.calib_count, args.fresh)))
        configs.append((m, "float32 (onnxruntime)", shared / "models" / f"{m}.onnx"))
    if args.peer:
        configs.append(("yolov8n-seg", "INT8 EdgeFirst (LiteRT)", shared / "peers/edgefirst/yolov8n-seg-smart-int8.tflite"))
    print(f"machine: {C.machine_note()}", flush=True)
    rows, medians = [], {}
    for threads in args.threads:
        for model, runtime, path in configs:
            print(f"timing {model} {runtime}, {threads} thread(s) ...", flush=True)
            r = measure_latency(path, images, runs=args.runs, warmup=args.warmup, threads=threads, conf=0.25, iou=0.7)
            s = r.stages
            medians[(model, runtime, threads)] = s["total"].median
            mask = f"{s['masks'].median:.2f}" if "masks" in s else "-"
            rows.append([
                model, runtime, threads,
                f"{s['preprocess'].median:.2f} / {s['preprocess'].p90:.2f}",
                f"{s['inference'].median:.2f} / {s['inference'].p90:.2f}",
                f"{s['decode'].median:.2f} / {s['decode'].p90:.2f}",
                mask,
                f"{s['total'].median:.2f} / {s['total'].p90:.2f}",
                f"{s['inference'].mean:.2f}",
            ])
    C.table(
        f"per-image latency, ms, median / p90 ({args.runs} calls over {len(images)} coco-val-dev images; conf 0.25)",
        ["model", "runtime", "threads", "preprocess", "inference", "decode", "masks (median)", "total", "inference mean"],
        rows,
        left=2,
    )
    print(f"machine after: {C.machine_note()}")
    speed = []
    for m in args.models:
        for threads in args.threads:
            i8 = medians[(m, "INT8 edgeq (LiteRT)", threads)]
            fp = medians[(m, "float32 (onnxruntime)", threads)]
            speed.append([m, threads, f"{fp:.1f}", f"{i8:.1f}", f"{fp / i8:.2f}x"])
    C.table("INT8 LiteRT vs float onnxruntime, total median per image", ["model", "threads", "float ms", "INT8 ms", "speed-up"], speed)


if __name__ == "__main__":
    main()
