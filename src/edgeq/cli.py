"""The ``edgeq`` command line: a thin layer over the Python API."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeq import __version__
from edgeq.errors import EdgeqError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Smart INT8 quantization of YOLO models into self-describing edge artifacts.\n\n"
        "Typical flow:\n\n"
        "  edgeq convert yolov8n.onnx --calib coco-calib/ -o yolov8n.tflite\n\n"
        "  edgeq predict yolov8n.tflite bus.jpg -o bus-pred.png\n\n"
        "  edgeq validate yolov8n.tflite --data val/instances.json --images val/images --compare yolov8n.onnx"
    ),
)
console = Console(stderr=True)


def _run(fn, *args, **kwargs):
    """Run an API call, turning user errors into a clear message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except EdgeqError as e:
        console.print(f"[bold red]error:[/] {e.what}")
        if e.fix:
            console.print(f"[yellow]fix:[/] {e.fix}")
        raise typer.Exit(2) from None


def _config(cls, **options):
    """Build a config; its validation errors name the command-line flag, not the field."""
    from edgeq.errors import ConfigError

    try:
        return cls(**options)
    except ConfigError as e:
        raise e.for_flag("--" + e.option.replace("_", "-")) from None


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@app.command()
def version() -> None:
    """Print the edgeq version."""
    print(__version__)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Float ONNX model (Ultralytics YOLOv8/YOLO11 detect or segment export)."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images: a folder, a dataset folder with images/, or a COCO instances.json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact path [default: <model>-<split>-int8.<target suffix> beside the model]."),
    split: str = typer.Option("smart", "--split", help="smart: cut at the head's per-scale endpoints (recommended); combined: one concatenated output (upstream baseline)."),
    target: str = typer.Option("tflite", "--target", help="Artifact format: tflite (fully-integer TFLite for LiteRT / i.MX 8M Plus)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Use only the first N calibration images [default: all]."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="Range setting for activations: percentile (clip the 0.001% most extreme values of each tail) | auto (per tensor, least expected error as seen after its consumer, e.g. SiLU) | minmax | mse | entropy."),
    split_hints: Optional[Path] = typer.Option(None, "--split-hints", help="EdgeFirst split_hints file (JSON/YAML) to check and name the cut."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for calibration."),
    int16: Optional[list[str]] = typer.Option(None, "--int16", help="Keep these activations in int16 (16x8 kernels): tensor names, comma-separated or repeated (see `edgeq analyze`)."),
    int16_budget: Optional[float] = typer.Option(None, "--int16-budget", help="Let up to PERCENT of activation elements be int16 (16x8): the head outputs first when they fit (YOLOv8n: 2.2%), then the layers a sensitivity pass on 2 calibration images finds costliest."),
    bias_correction: bool = typer.Option(False, "--bias-correction/--no-bias-correction", help="Fold the per-channel error INT8 adds at each conv into its bias, front to back on 32 calibration images (no measured gain on YOLOv8n; +40 s and +0.5 GB: off by default)."),
    equalize: bool = typer.Option(False, "--equalize/--no-equalize", help="Cross-layer equalization of the conv pairs where it is exact (no measured gain on YOLOv8: off by default)."),
    weight_rounding: str = typer.Option("gptq", "--weight-rounding", help="How conv weights get their INT8 codes: gptq (rounding errors spread over each filter's later weights to minimise the conv's output error on 32 calibration images; YOLOv5n: 4x lower per-conv error, head SQNR +1 to +4 dB, ~12 s; skipped for weights already on the INT8 grid) | nearest."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert an ONNX model into a fully-integer TFLite artifact with embedded metadata.

    The artifact takes raw uint8 RGB pixels (letterboxed, pad 114), gives int8 outputs each
    with its own scale, and carries edgefirst.json + labels.txt in an appended ZIP, so any
    schema-v2 runtime (edgeq, EdgeFirst HAL) decodes it from the file alone.
    """
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert as run_convert

    names = tuple(n.strip() for item in int16 or [] for n in item.split(",") if n.strip())
    cfg = _run(_config, ConvertConfig, split=split, target=target, calib_count=calib_count, calib_method=calib_method,
               split_hints=split_hints, threads=threads, int16=names, int16_budget=int16_budget,
               bias_correction=bias_correction, equalize=equalize, weight_rounding=weight_rounding)
    result = _run(run_convert, model, calib, output, cfg, progress=not quiet)
    size = result.path.stat().st_size / 1e6
    console.print(f"[green]wrote[/] {result.path} ({size:.1f} MB, {len(result.meta.outputs)} logical outputs, split={split})")
    mixed = result.meta.edgeq.get("mixed_precision")
    if mixed:
        outs = ", outputs " + result.meta.edgeq["output_dtype"] if "int16" in result.meta.edgeq.get("output_dtype", "") else ""
        console.print(f"  int16: {len(mixed['int16'])} activations ({mixed['elements_percent']:.2f}% of activation elements){outs}")


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="An artifact (.tflite with embedded metadata) or an ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print the embedded edgefirst.json instead of a summary."),
) -> None:
    """Show what an artifact contains (outputs, quantization, provenance) or what head an ONNX model has."""
    from edgeq.inspect import inspect_path

    report = _run(inspect_path, path)
    if as_json:
        print(json.dumps(report, indent=1))
        return
    _print_inspect(report)


def _print_inspect(report: dict) -> None:
    console.print(f"[bold]{report['path']}[/]  ({report['kind']})")
    for key in ("task", "decoder_version", "classes", "input", "head"):
        if key in report:
            console.print(f"  {key}: {report[key]}")
    if report.get("outputs"):
        t = Table("output", "type", "shape", "dtype", "scale", "zero_point", "stride")
        for o in report["outputs"]:
            t.add_row(o["name"], o["type"], str(o["shape"]), str(o.get("dtype", "")), str(o.get("scale", "")), str(o.get("zero_point", "")), str(o.get("stride", "")))
        Console().print(t)
    if report.get("provenance"):
        console.print(f"  provenance: {json.dumps(report['provenance'])}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Artifact (.tflite) or ONNX model."),
    image: Path = typer.Argument(..., help="Image file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the image with detections drawn."),
    conf: float = typer.Option(0.25, "--conf", help="Confidence threshold."),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold [default: the one the artifact declares (validation.iou): 0.7, YOLOv5 0.6]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads."),
) -> None:
    """Run a model on one image and print (and optionally draw) the detections."""
    from edgeq.api import predict_image

    dets, drawn = _run(predict_image, model, image, conf=conf, iou=iou, threads=threads, draw=output is not None)
    t = Table("#", "class", "score", "x1", "y1", "x2", "y2")
    for i, (name, s, b) in enumerate(zip(dets.names, dets.scores, dets.boxes)):
        t.add_row(str(i), name, f"{s:.3f}", *(f"{v:.1f}" for v in b))
    Console().print(t)
    if dets.timings_ms:
        console.print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in dets.timings_ms.items()))
    if output is not None:
        from edgeq.api import write_image

        _run(write_image, output, drawn)
        console.print(f"[green]wrote[/] {output}")


@app.command()
def validate(
    model: Path = typer.Argument(..., help="Artifact (.tflite) or ONNX model."),
    data: Path = typer.Option(..., "--data", help="COCO instances.json with the ground truth."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder [default: images/ beside --data]."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A second model evaluated on the same images, shown side by side."),
    save_json: Optional[Path] = typer.Option(None, "--save-json", help="Write detections in COCO results format."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON + Markdown report with this path prefix."),
    conf: float = typer.Option(0.001, "--conf"),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold [default: each model's declared validation.iou: 0.7, YOLOv5 0.6]."),
    max_det: int = typer.Option(300, "--max-det"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Evaluate only the first N images."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    ci: bool = typer.Option(False, "--ci", help="With --compare: bound the mAP50-95 delta by a 95% paired bootstrap over the images (1000 resamples, ~10-25 s), and measure the set's resolution (the --compare model's detections re-scored with a 0.1 % jitter, 8 runs). On a few dozen images a delta of half a point can be the images alone, or one near-tie."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """COCO mAP50-95 / mAP50 / recall (and mask metrics for segmentation), optionally vs another model."""
    from edgeq.api import validate_models

    if ci and compare is None:
        console.print("[bold red]error:[/] --ci bounds the delta between two models: add --compare MODEL")
        raise typer.Exit(2)
    images = images or data.parent / "images"
    _run(
        validate_models, model, data, images, compare=compare, save_json=save_json, report=report,
        conf=conf, iou=iou, max_det=max_det, max_images=max_images, threads=threads, progress=not quiet, ci=ci,
    )


@app.command()
def analyze(
    model: Path = typer.Argument(..., help="The float ONNX model the artifact was converted from."),
    artifact: Path = typer.Argument(..., help="The edgeq .tflite artifact to analyze."),
    images: Path = typer.Option(..., "--images", help="Images to run: a folder, a dataset folder with images/, or a COCO instances.json."),
    count: int = typer.Option(4, "--count", help="Use the first N images (each costs one float pass per layer)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write PREFIX.md, PREFIX.html and PREFIX.json."),
    top: int = typer.Option(15, "--top", help="Layers to list."),
    sensitivity: bool = typer.Option(True, "--sensitivity/--no-sensitivity", help="Run the per-layer sensitivity pass (the slow part)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Explain an artifact's INT8 loss: float-vs-artifact SQNR per tensor and per-layer sensitivity.

    Runs the float cut graph and the artifact on the same letterboxed images and compares every
    tensor they share; then quantizes one layer at a time in the float graph (with the
    artifact's own scale and zero point) and ranks the layers by the head-output error each
    causes. Layers at the top are the ones to keep in int16 (`edgeq convert --int16 NAME` or
    `--int16-budget PERCENT`).
    """
    from tqdm import tqdm

    from edgeq.analysis.analyze import analyze as run_analyze
    from edgeq.analysis.analyze import print_analysis, write_reports

    bars: list[tqdm] = []

    def progress(label: str, total: int):
        bar = tqdm(total=total, desc=label, unit="layer", disable=quiet)
        bars.append(bar)
        return bar.update

    result = _run(run_analyze, model, artifact, images, count=count, sensitivity=sensitivity, threads=threads, progress=progress)
    for bar in bars:
        bar.close()
    print_analysis(result, Console(width=None if Console().is_terminal else 160), top=top)
    if report is not None:
        for p in write_reports(result, report):
            console.print(f"[green]wrote[/] {p}")


@app.command()
def bench(
    model: Path = typer.Argument(..., help="Artifact (.tflite) or ONNX model."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder to cycle through (default: a built-in synthetic 640x480 image)."),
    runs: int = typer.Option(50, "--runs", help="Measured predict() calls (and profiled inferences)."),
    warmup: int = typer.Option(5, "--warmup", help="Calls before measuring."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Interpreter/session threads (default: the runtime's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write latency and profile as JSON here."),
    top: int = typer.Option(15, "--top", help="Ops to list in each profile table."),
    conf: float = typer.Option(0.25, "--conf", help="Confidence threshold for decode."),
    max_images: int = typer.Option(50, "--max-images", help="Read at most this many images from --images."),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Also profile per op (onnxruntime / LiteRT profiler)."),
    kernels: str = typer.Option("xnnpack", "--kernels", help="TFLite profile: xnnpack (the default CPU path) or builtin (TFLite kernels, one row per graph node)."),
) -> None:
    """Latency (median / p90 / mean) of preprocess, inference and decode, and a per-op profile.

    ONNX models are profiled with onnxruntime's profiler; TFLite artifacts with LiteRT's C-API
    profiler on the same XNNPACK CPU kernels the runtime uses.
    """
    from edgeq.perf.latency import load_images, measure_latency, print_latency
    from edgeq.perf.profile import print_profile, profile_model

    if kernels not in ("xnnpack", "builtin"):
        console.print(f"[bold red]error:[/] --kernels must be xnnpack or builtin, not {kernels!r}")
        raise typer.Exit(2)
    out = Console(width=None if Console().is_terminal else 140)
    imgs, label = _run(load_images, images, max_images)
    lat = _run(measure_latency, model, imgs, runs=runs, warmup=warmup, threads=threads, conf=conf, images_label=label)
    print_latency(lat, out)
    report: dict = {"latency": lat.to_json()}
    if profile:
        from edgeq.runtime import load

        tensor = _run(load, model, threads=threads).preprocess(imgs[0])[0]
        prof = _run(profile_model, model, tensor, runs=runs, warmup=warmup, threads=threads, kernels=kernels)  # type: ignore[arg-type]
        print_profile(prof, top=top, console=out)
        report["profile"] = prof.to_json()
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        console.print(f"[green]wrote[/] {json_out}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
