"""The ``edgeq`` command line: a thin layer over the Python API.

Every command runs inside :func:`_command`: a user error (``EdgeqError``) prints ``error:`` and
``fix:`` and exits 2; anything unexpected prints one ``error: internal error (...)`` line and exits
1, with the traceback only under ``--verbose``. Help is plain text (no rich markup) so that the
``[default: ...]`` of every option shows.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeq import __version__
from edgeq.errors import EdgeqError

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # rich markup would eat the "[default: ...]" written in help texts
    no_args_is_help=True,
    help=(
        "Smart INT8 quantization of YOLO models into self-describing edge artifacts.\n\n"
        "Typical flow:\n\n"
        "\b\n"
        "  edgeq convert yolov8n.onnx --calib coco-calib/ -o yolov8n.tflite\n"
        "  edgeq predict yolov8n.tflite bus.jpg -o bus-pred.png\n"
        "  edgeq validate yolov8n.tflite --data val/instances.json --images val/images --compare yolov8n.onnx"
    ),
)
console = Console(stderr=True)
#: set by ``--verbose``: unexpected errors show their traceback
_verbose = False


def _user_error(e: EdgeqError) -> typer.Exit:
    # soft_wrap: a path in the message stays on one line, whatever the terminal width
    console.print(f"[bold red]error:[/] {escape(e.what)}", highlight=False, soft_wrap=True)
    if e.fix:
        console.print(f"[yellow]fix:[/] {escape(e.fix)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _run(fn, *args, **kwargs):
    """Run an API call, turning user errors into a clear message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except EdgeqError as e:
        raise _user_error(e) from None


def _command(*args: Any, **kwargs: Any) -> Callable:
    """``app.command`` whose function reports errors the CLI way (see the module docstring)."""
    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except (typer.Exit, typer.Abort, click.exceptions.ClickException, SystemExit):
                raise
            except EdgeqError as e:
                raise _user_error(e) from None
            except KeyboardInterrupt:
                console.print("[bold red]interrupted[/]")
                raise typer.Exit(130) from None
            except Exception as e:  # noqa: BLE001 - the one place every unexpected error ends up
                if _verbose:
                    traceback.print_exc(file=sys.stderr)
                message = str(e).strip().splitlines()[0] if str(e).strip() else ""
                console.print(f"[bold red]error:[/] internal error ({type(e).__name__}"
                              f"{': ' + escape(message) if message else ''}); "
                              + ("the traceback is above" if _verbose else "rerun with --verbose for the traceback"),
                              highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        return app.command(*args, **kwargs)(run)

    return register


def _config(cls, **options):
    """Build a config; its validation errors name the command-line flag, not the field."""
    from edgeq.errors import ConfigError

    try:
        return cls(**options)
    except ConfigError as e:
        raise e.for_flag("--" + e.option.replace("_", "-")) from None


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging, and the traceback of an internal error."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the edgeq version and exit."),
) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@_command()
def version() -> None:
    """Print the edgeq version (same as edgeq --version)."""
    print(__version__)


@_command()
def convert(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model (Ultralytics YOLOv8/YOLO11 detect or segment export)."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images: a folder, a dataset folder with images/, a COCO instances.json, or one image file (too few for good ranges; for a quick try)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact path; never the model or a calibration file, checked before any work. [default: <model>-<split>-int8.<target suffix> beside the model]"),
    split: str = typer.Option("smart", "--split", help="smart: cut at the head's per-scale endpoints (recommended); combined: one concatenated output (upstream baseline)."),
    target: str = typer.Option("tflite", "--target", help="Artifact format: tflite (fully-integer TFLite for LiteRT / i.MX 8M Plus)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Use only the first N calibration images. [default: all]"),
    calib_method: str = typer.Option("percentile", "--calib-method", help="Range setting for activations: percentile (clip the 0.001% most extreme values of each tail) | auto (per tensor, least expected error as seen after its consumer, e.g. SiLU) | minmax | mse | entropy."),
    split_hints: Optional[Path] = typer.Option(None, "--split-hints", help="EdgeFirst split_hints file (JSON/YAML) to check and name the cut. [default: none]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads of the guard's artifact runs. Calibration, weight rounding and sensitivity run on one onnxruntime thread whatever this is, so that the artifact does not depend on it. [default: the runtime's]"),
    int16: Optional[list[str]] = typer.Option(None, "--int16", help="Keep these activations in int16 (16x8 kernels): tensor names, comma-separated or repeated (see `edgeq analyze`). [default: none, all int8]"),
    int16_budget: Optional[float] = typer.Option(None, "--int16-budget", help="Let up to PERCENT of activation elements be int16 (16x8): the head outputs first when they fit (YOLOv8n: 2.2%), then the layers a sensitivity pass on 2 calibration images finds costliest. [default: off]"),
    bias_correction: bool = typer.Option(False, "--bias-correction/--no-bias-correction", help="Fold the per-channel error INT8 adds at each conv into its bias, front to back on 32 calibration images (no measured gain on YOLOv8n; +40 s and +0.5 GB: off by default)."),
    equalize: bool = typer.Option(False, "--equalize/--no-equalize", help="Cross-layer equalization of the conv pairs where it is exact (no measured gain on YOLOv8: off by default)."),
    on_collapse: str = typer.Option("error", "--on-collapse", help="When the collapse guard finds an output INT8 destroyed: error (write nothing, say which output and what to do) | warn (write it anyway, e.g. a combined baseline)."),
    weight_rounding: str = typer.Option("gptq", "--weight-rounding", help="How conv weights get their INT8 codes: gptq (rounding errors spread over each filter's later weights to minimise the conv's output error on 32 calibration images; YOLOv5n: 4x lower per-conv error, head SQNR +1 to +4 dB, ~12 s; skipped for weights already on the INT8 grid) | nearest."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images", help="Calibrate without the calibration images that cannot be decoded (counted in a warning) instead of refusing to start. Every image is decoded once before the model work either way."),
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
               bias_correction=bias_correction, equalize=equalize, weight_rounding=weight_rounding,
               on_collapse=on_collapse,
               skip_bad_images=skip_bad_images)
    result = _run(run_convert, model, calib, output, cfg, progress=not quiet)
    size = result.path.stat().st_size / 1e6
    console.print(f"[green]wrote[/] {result.path} ({size:.1f} MB, {len(result.meta.outputs)} logical outputs, split={split})")
    mixed = result.meta.edgeq.get("mixed_precision")
    if mixed:
        outs = ", outputs " + result.meta.edgeq["output_dtype"] if "int16" in result.meta.edgeq.get("output_dtype", "") else ""
        console.print(f"  int16: {len(mixed['int16'])} activations ({mixed['elements_percent']:.2f}% of activation elements){outs}")


@_command()
def inspect(
    path: Path = typer.Argument(..., metavar="PATH", help="An artifact (.tflite with embedded metadata) or an ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly the embedded edgefirst.json (nothing else on stdout); a file without one (a plain ONNX export): this summary as JSON."),
) -> None:
    """Show what an artifact contains (outputs, quantization, provenance) or what head an ONNX model has.

    The report goes to stdout (errors to stderr), so it can be piped or redirected.
    """
    from edgeq.inspect import inspect_path

    if as_json:
        text = _embedded_json(path) if path.is_file() else None
        if text is not None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            return
        print(json.dumps(_run(inspect_path, path), indent=1))
        return
    _print_inspect(_run(inspect_path, path))


def _embedded_json(path: Path) -> str | None:
    """The edgefirst.json a file carries, exactly as stored (None when it has none)."""
    from edgeq.errors import ArtifactError
    from edgeq.meta.embed import EDGEFIRST_JSON, read_embedded

    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # not ONNX: inspect_path says so  # noqa: BLE001
            return None
        text = next((p.value for p in model.metadata_props if p.key == "edgefirst"), None)
    else:
        data = read_embedded(path).get(EDGEFIRST_JSON)
        text = None if data is None else data.decode("utf-8", errors="replace")
    if text is not None:
        try:
            json.loads(text)
        except ValueError as e:
            raise ArtifactError(f"the edgefirst.json embedded in {path} is not valid JSON ({e})",
                                "convert the model again with `edgeq convert`") from None
    return text


def _print_inspect(report: dict) -> None:
    out = Console(highlight=False)
    out.print(f"[bold]{report['path']}[/]  ({report['kind']})")
    for key in ("task", "decoder_version", "classes", "input", "head"):
        if key in report:
            out.print(f"  {key}: {report[key]}")
    if report.get("outputs"):
        t = Table("output", "type", "shape", "dtype", "scale", "zero_point", "stride")
        for o in report["outputs"]:
            t.add_row(o["name"], o["type"], str(o["shape"]), str(o.get("dtype", "")), str(o.get("scale", "")), str(o.get("zero_point", "")), str(o.get("stride", "")))
        out.print(t)
    if report.get("provenance"):
        out.print(f"  provenance: {json.dumps(report['provenance'])}", markup=False)


@_command()
def predict(
    model: Path = typer.Argument(..., metavar="MODEL", help="Artifact (.tflite) or ONNX model."),
    image: Path = typer.Argument(..., metavar="IMAGE", help="Image file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the image with detections drawn (.png, .jpg, ...; checked before the model runs). [default: none, print only]"),
    conf: float = typer.Option(0.25, "--conf", help="Confidence threshold."),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold. [default: the one the artifact declares (validation.iou): 0.7, YOLOv5 0.6]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads. [default: the runtime's]"),
) -> None:
    """Run a model on one image and print (and optionally draw) the detections."""
    from edgeq.api import predict_image

    dets, _ = _run(predict_image, model, image, conf=conf, iou=iou, threads=threads, output=output)
    kpts = dets.keypoints  # pose: visible (visibility > 0.5) / all keypoints per detection
    if dets.probs is not None:  # classifier: the top-5 classes of the image
        t = Table("#", "class", "probability")
        for i, (name, s) in enumerate(zip(dets.names, dets.scores)):
            t.add_row(str(i + 1), name, f"{s:.4f}")
    elif dets.class_map is not None:  # semantic segmentation: the classes by share of the image
        import numpy as np

        ids, counts = np.unique(dets.class_map, return_counts=True)
        t = Table("class", "pixels %")
        for c, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda p: -p[1])[:10]:
            t.add_row(dets.labels[c] if 0 <= c < len(dets.labels) else str(c), f"{100 * n / dets.class_map.size:.1f}")
    else:
        t = Table("#", "class", "score", "x1", "y1", "x2", "y2", *(("keypoints",) if kpts is not None else ()))
        for i, (name, s, b) in enumerate(zip(dets.names, dets.scores, dets.boxes)):
            extra = (f"{int((kpts[i, :, 2] > 0.5).sum())}/{kpts.shape[1]}",) if kpts is not None else ()
            t.add_row(str(i), name, f"{s:.3f}", *(f"{v:.1f}" for v in b), *extra)
    Console().print(t)
    if dets.timings_ms:
        console.print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in dets.timings_ms.items()))
    if output is not None:
        console.print(f"[green]wrote[/] {output}", highlight=False)


@_command()
def validate(
    model: Path = typer.Argument(..., metavar="MODEL", help="Artifact (.tflite) or ONNX model."),
    data: Path = typer.Option(..., "--data", help="The ground truth: a COCO instances.json (detect, segment; semantic models: per-pixel classes built from its instance masks, background where there is none, scored as mIoU); for classifiers a folder with one sub-folder of images per class, named as the model's labels (top-1 / top-5; --images unused)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder; images the json lists but the folder lacks are skipped with a warning (all missing: an error). [default: images/ beside --data]"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A second model evaluated on the same images, shown side by side. [default: none]"),
    save_json: Optional[Path] = typer.Option(None, "--save-json", help="Write detections in COCO results format (path checked before validating). [default: none]"),
    report: Optional[Path] = typer.Option(None, "--report", help="Write PREFIX.md and PREFIX.json (a folder: report.md and report.json in it). [default: none]"),
    conf: float = typer.Option(0.001, "--conf", help="Confidence threshold (yolo val's)."),
    iou: Optional[float] = typer.Option(None, "--iou", help="NMS IoU threshold. [default: each model's declared validation.iou: 0.7, YOLOv5 0.6]"),
    max_det: int = typer.Option(300, "--max-det", help="Detections kept per image."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Evaluate only the first N images. [default: all]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads. [default: the runtime's]"),
    ci: bool = typer.Option(False, "--ci", help="With --compare: bound the mAP50-95 delta by a 95% paired bootstrap over the images (1000 resamples, ~10-25 s), and measure the set's resolution (the --compare model's detections re-scored with a 0.1 % jitter, 8 runs). On a few dozen images a delta of half a point can be the images alone, or one near-tie."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """COCO mAP50-95 / mAP50 / recall (and mask metrics for segmentation), optionally vs another model.

    Metrics print in percent, differences in percentage points; the JSON report keeps fractions.
    """
    from edgeq.api import validate_models

    if ci and compare is None:
        raise EdgeqError("--ci bounds the delta between two models, but there is no --compare", "add --compare MODEL")
    images = images or data.parent / "images"
    _run(
        validate_models, model, data, images, compare=compare, save_json=save_json, report=report,
        conf=conf, iou=iou, max_det=max_det, max_images=max_images, threads=threads, progress=not quiet, ci=ci,
    )
    from edgeq.eval.report import report_paths

    for path in ([save_json] if save_json is not None else []) + (list(report_paths(report)) if report else []):
        console.print(f"[green]wrote[/] {path}", highlight=False)


@_command()
def analyze(
    model: Path = typer.Argument(..., metavar="MODEL", help="The float ONNX model the artifact was converted from."),
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="The edgeq .tflite artifact to analyze."),
    images: Path = typer.Option(..., "--images", help="Images to run: a folder, a dataset folder with images/, or a COCO instances.json."),
    count: int = typer.Option(4, "--count", help="Use the first N images (each costs one float pass per layer)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write PREFIX.md, PREFIX.html and PREFIX.json (paths checked before the analysis runs). [default: none]"),
    top: int = typer.Option(15, "--top", help="Layers to list."),
    sensitivity: bool = typer.Option(True, "--sensitivity/--no-sensitivity", help="Run the per-layer sensitivity pass (the slow part: its duration is estimated on its first layer and printed)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime threads. [default: the runtime's]"),
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
    from edgeq.analysis.analyze import check_report_paths, print_analysis, write_reports

    if report is not None:
        check_report_paths(report, inputs=(model, artifact))
    bars: list[tqdm] = []

    def progress(label: str, total: int):
        bar = tqdm(total=total, desc=f"{artifact.stem}: {label}", unit="layer", disable=quiet)
        bars.append(bar)
        return bar.update

    def notify(line: str) -> None:
        tqdm.write(f"{artifact.stem}: {line}", file=sys.stderr)

    result = _run(run_analyze, model, artifact, images, count=count, sensitivity=sensitivity, threads=threads,
                  progress=progress, notify=notify)
    for bar in bars:
        bar.close()
    print_analysis(result, Console(width=None if Console().is_terminal else 160), top=top)
    if report is not None:
        for p in write_reports(result, report):
            console.print(f"[green]wrote[/] {p}", highlight=False)


@_command()
def bench(
    model: Path = typer.Argument(..., metavar="MODEL", help="Artifact (.tflite) or ONNX model."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder to cycle through. [default: a built-in synthetic 640x480 image]"),
    runs: int = typer.Option(50, "--runs", help="Measured predict() calls (and profiled inferences)."),
    warmup: int = typer.Option(5, "--warmup", help="Calls before measuring."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Interpreter/session threads. [default: the runtime's]"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write latency and profile as JSON here. [default: none]"),
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
    from edgeq.fileio import check_writable_output, write_text_atomic
    from edgeq.perf.latency import load_images, measure_latency, print_latency
    from edgeq.perf.profile import print_profile, profile_model

    if kernels not in ("xnnpack", "builtin"):
        raise EdgeqError(f"--kernels must be xnnpack or builtin, not {kernels!r}", "use --kernels xnnpack (the default) or --kernels builtin")
    if json_out is not None:
        check_writable_output(json_out, inputs=[model] + ([images] if images else []), kind="--json")
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
        write_text_atomic(json_out, json.dumps(report, indent=1))
        console.print(f"[green]wrote[/] {json_out}", highlight=False)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
