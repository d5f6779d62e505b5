"""Helpers shared by the bench scripts: paths, argument parsing, artifacts, timing, tables.

The scripts are plain programs (``python bench/decode.py``); this module sits beside them and
is imported as ``_common``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"
ARTIFACTS = REPO / "out" / "bench" / "artifacts"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the common ``--shared`` option."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder (models/, peers/, coco-*/)")
    return p


def check_shared(shared: Path, *needed: str) -> Path:
    """``shared`` resolved; exit with a clear message when it (or a needed entry) is missing."""
    shared = shared.expanduser().resolve()
    missing = [n for n in needed if not (shared / n).exists()]
    if not shared.is_dir() or missing:
        what = f"{shared} does not exist" if not shared.is_dir() else f"{shared} lacks {', '.join(missing)}"
        sys.exit(f"error: shared data not found: {what}.\n  Pass --shared PATH (the folder holding models/, peers/ and coco-calib/).")
    return shared


def artifact(shared: Path, model: str, split: str = "smart", calib_count: int = 200, fresh: bool = False) -> Path:
    """Our converted artifact of ``models/<model>.onnx``, converted once into out/bench/artifacts/.

    Conversion is deterministic (byte-identical output for the same input), so a cached file is
    reused unless ``fresh`` (delete out/bench/artifacts after changing the converter).
    """
    out = ARTIFACTS / f"{model}-{split}-c{calib_count}-int8.tflite"
    if out.is_file() and not fresh:
        return out
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert

    t0 = time.perf_counter()
    print(f"converting {model}.onnx ({split}, {calib_count} calibration images) -> {out.relative_to(REPO)} ...", flush=True)
    convert(shared / "models" / f"{model}.onnx", shared / "coco-calib", out, ConvertConfig(split=split, calib_count=calib_count), progress=False)  # type: ignore[arg-type]
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def image_paths(folder: Path, limit: int | None = None) -> list[Path]:
    """Sorted .jpg/.png files of a folder (or its images/ subfolder)."""
    if (folder / "images").is_dir():
        folder = folder / "images"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]


@dataclass(frozen=True)
class Summary:
    """median / p90 / mean of a list of milliseconds."""

    n: int
    median: float
    p90: float
    mean: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> Summary:
        a = np.asarray(ms, np.float64)
        return cls(int(a.size), float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, milliseconds) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> None:
    """Print a rich table to stdout (140 columns when not a terminal, so logs stay readable).

    The first ``left`` columns are left-aligned labels; the rest (numbers) are right-aligned.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i < left else "right")
    for r in rows:
        t.add_row(*(str(v) for v in r))
    console.print(t)


@dataclass(frozen=True)
class ChildRun:
    """A finished subprocess: exit code, wall seconds, peak RSS (MiB), output tail."""

    returncode: int
    wall_s: float
    peak_rss_mib: float
    output: str


def run_child(cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, log: Path | None = None) -> ChildRun:
    """Run ``cmd``; wall time and the peak RSS of that process (and the children it waited for).

    Peak RSS comes from ``os.wait4``, the kernel's per-child ``ru_maxrss`` (KiB on Linux), so other
    children of this script do not pollute it as ``RUSAGE_CHILDREN`` would.
    """
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    text = ""
    if out is subprocess.PIPE:
        assert proc.stdout is not None
        text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()  # type: ignore[union-attr]
        text = log.read_text(errors="replace")
    return ChildRun(proc.returncode, wall, usage.ru_maxrss / 1024, text[-4000:])


def edgeq_cli() -> list[str]:
    """The command that runs this checkout's ``edgeq`` CLI with this interpreter."""
    return [sys.executable, "-m", "edgeq"]


def machine_note() -> str:
    """CPU count and load average, printed with every benchmark: timings on a busy machine are noise."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
