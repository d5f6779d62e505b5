"""End-to-end latency of a model, stage by stage: preprocess, inference, decode (and masks).

Each measured call is one :meth:`edgeq.runtime.Model.predict` on one image; the stage times are the
runtime's own ``Detections.timings_ms`` (``time.perf_counter`` around letterbox + input encoding,
the interpreter/session call, threshold + box decode + NMS, and mask assembly), plus the wall
time of the whole call as ``total``. Warm-up calls are run first and not counted. Percentiles are
over calls (nearest-rank-free linear interpolation, as ``numpy.percentile``).

    from edgeq.perf.latency import measure_latency
    res = measure_latency("yolov8n.tflite", runs=50, threads=2)
    print(res.stages["inference"].median)
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError

STAGES = ("preprocess", "inference", "decode", "masks", "total")


@dataclass(frozen=True)
class Stats:
    """Summary of one stage's samples, in milliseconds."""

    n: int
    median: float
    p90: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Stats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise EdgeqError("no latency samples to summarize")
        return cls(int(a.size), float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()), float(a.min()), float(a.max()))


@dataclass
class LatencyResult:
    """Per-stage latency of one model.

    Attributes:
        model: the model file.
        backend: ``tflite`` or ``onnx``.
        threads: interpreter/session threads (None: the runtime's default).
        runs: measured calls.
        warmup: calls before measuring.
        images: distinct images cycled through (``synthetic`` when none were given).
        input: the model input's shape and dtype.
        settings: predict() arguments.
        stages: stage name -> :class:`Stats` (``masks`` only for segmentation models).
        detections: mean detections per call.
    """

    model: str
    backend: str
    threads: int | None
    runs: int
    warmup: int
    images: str
    input: str
    settings: dict[str, Any]
    stages: dict[str, Stats] = field(default_factory=dict)
    detections: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic 640x480 BGR test image: smooth gradients plus a few solid shapes.

    Not square, so it goes through the same resize + 114-padding letterbox as a camera frame; its
    content only matters for how many candidates the decoder sees (a handful, as in a real scene).
    """
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 120))
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), color, -1)
        cv2.circle(img, (x0 + w // 2, y0 + h // 2), max(8, min(w, h) // 3), tuple(255 - c for c in color), -1)
    return img


def load_images(folder: str | Path | None, limit: int | None = None) -> tuple[list[np.ndarray], str]:
    """Decoded BGR images of a folder (name order, first ``limit``), or the synthetic image."""
    if folder is None:
        return [synthetic_image()], "synthetic 640x480"
    from edgeq.calib.dataset import IMAGE_SUFFIXES
    from edgeq.calib.preprocess import read_image

    folder = Path(folder)
    if (folder / "images").is_dir():
        folder = folder / "images"
    if not folder.is_dir():
        raise EdgeqError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise EdgeqError(f"no images in {folder}", "give a folder of .jpg/.png images")
    return [read_image(p) for p in paths], f"{len(paths)} from {folder}"


def measure_latency(
    model: Any,
    images: Sequence[np.ndarray] | None = None,
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    masks: bool = True,
    images_label: str | None = None,
) -> LatencyResult:
    """Per-stage latency of ``model`` (a path, or a loaded :class:`edgeq.runtime.Model`).

    Args:
        model: ``.tflite`` / ``.onnx`` path, or a loaded model (``threads`` is then ignored).
        images: BGR images to cycle through (default: :func:`synthetic_image`).
        runs: measured predict() calls.
        warmup: calls before measuring.
        threads: interpreter/session threads when ``model`` is a path.
        conf, iou, max_det: decode settings (deployment defaults).
        masks: assemble instance masks for segmentation models (timed as ``masks``).
        images_label: how to describe ``images`` in the result.
    """
    from edgeq.runtime import load

    if runs <= 0:
        raise EdgeqError(f"runs must be positive, got {runs}")
    m = load(model, threads=threads) if isinstance(model, (str, Path)) else model
    if images is None or len(images) == 0:
        images, images_label = [synthetic_image()], "synthetic 640x480"
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    n_det = 0
    settings = {"conf": conf, "iou": iou, "max_det": max_det, "masks": masks}
    for i in range(warmup + runs):
        img = images[i % len(images)]
        t0 = time.perf_counter()
        det = m.predict(img, **settings)
        total = (time.perf_counter() - t0) * 1e3
        if i < warmup:
            continue
        for k, v in det.timings_ms.items():
            samples.setdefault(k, []).append(float(v))
        samples["total"].append(total)
        n_det += len(det)
    segment = bool(getattr(m.decoder, "segments", False)) and masks
    stages = {k: Stats.of(v) for k, v in samples.items() if v and (k != "masks" or segment)}
    inp = m.backend.inputs[0]
    return LatencyResult(
        model=str(m.path),
        backend=Path(m.path).suffix.lstrip(".").lower(),
        threads=threads,
        runs=runs,
        warmup=warmup,
        images=images_label or f"{len(images)} images",
        input=f"{list(inp.shape)} {inp.dtype}",
        settings=settings,
        stages=stages,
        detections=n_det / runs,
    )


def print_latency(result: LatencyResult, console: Any = None) -> None:
    """A rich table: one row per stage, median / p90 / mean / min / max in ms."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(
        title=f"latency {Path(result.model).name} ({result.backend}, threads {result.threads or 'default'},"
        f" {result.runs} runs on {result.images}, input {result.input})",
        title_justify="left",
    )
    for col in ("stage", "median ms", "p90 ms", "mean ms", "min ms", "max ms"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for name, s in result.stages.items():
        style = "bold" if name == "total" else None
        t.add_row(name, f"{s.median:.2f}", f"{s.p90:.2f}", f"{s.mean:.2f}", f"{s.min:.2f}", f"{s.max:.2f}", style=style)
    console.print(t)
    console.print(f"  [dim]{result.detections:.1f} detections per call at conf {result.settings['conf']}[/]")


__all__ = ["STAGES", "LatencyResult", "Stats", "load_images", "measure_latency", "print_latency", "synthetic_image"]
