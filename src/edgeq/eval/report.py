"""Compare validation results and render them: rich tables on the terminal, Markdown + JSON on disk.

A comparison reads "b against baseline a": every delta is ``b - a``, so an INT8 artifact compared
with its float model shows its accuracy loss as a negative number.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeq.eval.bootstrap import DeltaInterval, paired_bootstrap
from edgeq.eval.floor import PerturbationFloor, floor_note, perturbation_floor
from edgeq.eval.result import HEADLINE_KEYS, ValidationResult
from edgeq.fileio import write_text_atomic

# Settings that change the numbers; a comparison across different values is flagged.
_COMPARABLE_SETTINGS = ("conf", "iou", "max_det", "multi_label", "max_images", "label_mapping")


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


@dataclass(frozen=True)
class MetricDelta:
    """One metric of both results; ``delta`` is b - a."""

    iou_type: str
    metric: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return _sub(self.a, self.b)


@dataclass(frozen=True)
class ClassDelta:
    """mAP50-95 of one category in both results; ``delta`` is b - a."""

    iou_type: str
    name: str
    category_id: int
    instances: int
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return _sub(self.a, self.b)


@dataclass
class Comparison:
    """Two results side by side (b against baseline a).

    Attributes:
        a, b: the results.
        metrics: every metric both results have, per iou type.
        per_class: per-category mAP50-95 of both, per iou type.
        warnings: why the numbers may not be comparable (other dataset, images or settings).
        intervals: iou type -> 95 % paired-bootstrap interval of the mAP50-95 delta (when
            compared with ``ci=True``): the spread the choice of images alone causes.
        floor: with ``ci=True``, the set's resolution: how far ``a``'s own mAP moves when its
            detections are jittered imperceptibly (:mod:`edgeq.eval.floor`).
    """

    a: ValidationResult
    b: ValidationResult
    metrics: list[MetricDelta]
    per_class: list[ClassDelta]
    warnings: list[str] = field(default_factory=list)
    intervals: dict[str, DeltaInterval] = field(default_factory=dict)
    floor: PerturbationFloor | None = None

    def delta(self, metric: str = "mAP50-95", iou_type: str = "bbox") -> float | None:
        """b - a for one metric (None if either lacks it)."""
        return next((m.delta for m in self.metrics if m.metric == metric and m.iou_type == iou_type), None)

    def largest_drops(self, n: int = 10, iou_type: str = "bbox") -> list[ClassDelta]:
        """The ``n`` categories that lose the most AP from a to b."""
        rows = [c for c in self.per_class if c.iou_type == iou_type and c.delta is not None]
        return sorted(rows, key=lambda c: c.delta)[:n]  # type: ignore[arg-type, return-value]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: names, warnings, metric and per-class rows with deltas."""
        row = lambda d: {**d.__dict__, "delta": d.delta}  # noqa: E731 - dataclass fields + delta
        return {
            "a": self.a.model,
            "b": self.b.model,
            "warnings": list(self.warnings),
            "metrics": [row(m) for m in self.metrics],
            "per_class": [row(c) for c in self.per_class],
            "intervals": {t: i.to_json() for t, i in self.intervals.items()},
            "floor": self.floor.to_json() if self.floor else None,
            "timings_ms": {"a": self.a.timings_ms, "b": self.b.timings_ms},
        }


def _warnings(a: ValidationResult, b: ValidationResult) -> list[str]:
    out = []
    if Path(a.dataset).resolve() != Path(b.dataset).resolve():
        out.append(f"different datasets: {a.dataset} vs {b.dataset}")
    if a.images != b.images:
        out.append(f"different image counts: {a.images} vs {b.images}")
    for key in _COMPARABLE_SETTINGS:
        if a.settings.get(key) != b.settings.get(key):
            out.append(f"different {key}: {a.settings.get(key)} vs {b.settings.get(key)}")
    return out


def compare(a: ValidationResult, b: ValidationResult, ci: bool = False) -> Comparison:
    """Compare ``b`` against baseline ``a`` on the iou types and categories both evaluated.

    ``ci``: bound each mAP50-95 delta by a paired bootstrap over the images (both results need
    ``keep_matches=True`` and the same images; ~10-25 s per iou type on 1000 resamples), and
    measure the set's resolution by jittering ``a``'s detections (a few seconds).

    Raises:
        ValueError: ``ci`` without the matches or images it needs.
    """
    metrics = [
        MetricDelta(t, k, a.metrics[t].get(k), b.metrics[t].get(k))
        for t in a.metrics
        if t in b.metrics
        for k in a.metrics[t]
    ]
    per_class = []
    for t in a.per_class:
        b_ap = {c.category_id: c.ap50_95 for c in b.per_class.get(t, [])}
        per_class += [ClassDelta(t, c.name, c.category_id, c.instances, c.ap50_95, b_ap.get(c.category_id)) for c in a.per_class[t]]
    intervals = {}
    if ci:
        missing = [r.model for r in (a, b) if not r.matches]
        if missing:
            raise ValueError(f"no per-image matches kept for {missing}: validate with keep_matches=True")
        intervals = {t: paired_bootstrap(a.matches[t], b.matches[t]) for t in a.matches if t in b.matches}
    floor = perturbation_floor(a) if ci and a.coco_results else None
    return Comparison(a, b, metrics, per_class, _warnings(a, b), intervals, floor)


def _interval_note(cmp: Comparison) -> str:
    """One line per iou type: the delta in points with its 95 % interval, in plain words."""
    parts = []
    for t, i in cmp.intervals.items():
        verdict = "within what the choice of images explains" if i.low <= 0.0 <= i.high else "beyond it"
        parts.append(f"{t} mAP50-95 Δ {i} points (95 % paired bootstrap over images, {i.iterations} resamples): {verdict}")
    if cmp.floor is not None:
        parts.append(floor_note(cmp.floor, {t: cmp.delta("mAP50-95", t) for t in cmp.floor.deltas}))
    return "\n".join(parts)


# ---------------------------------------------------------------- formatting


#: How metrics read on screen and in Markdown: mAP, AP and recall in percent, differences in
#: percentage points (the unit of the bootstrap interval and the resolution floor). JSON keeps
#: COCOeval's fractions.
UNITS_NOTE = "mAP, AP and recall in %; Δ in percentage points"


def _f(v: float | None) -> str:
    """A metric (fraction) as a percentage: 0.4562 -> ``45.6``."""
    return "–" if v is None else f"{100 * v:.1f}"


def _d(v: float | None) -> str:
    """A difference of two metrics (fractions) in points: -0.0026 -> ``-0.26``."""
    return "–" if v is None else f"{100 * v:+.2f}"


def _styled_delta(v: float | None) -> str:
    """Rich markup: losses red, gains green; below 0.005 points it rounds to zero, so no colour."""
    if v is None or abs(v) < 5e-5:
        return _d(v)
    return f"[{'red' if v < 0 else 'green'}]{_d(v)}[/]"


def _ms(r: ValidationResult) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in r.timings_ms.items()) or "–"


def _counts(r: ValidationResult) -> str:
    missing = r.settings.get("missing_images")
    skipped = f" ({missing} listed in the json but missing from the folder: skipped)" if missing else ""
    return (f"{r.images} images{skipped}, {r.instances} instances, {r.detections} detections "
            f"({r.dropped} of other classes dropped)")


# ---------------------------------------------------------------- rich


def result_table(r: ValidationResult, top_classes: int = 0) -> Table:
    """A rich table of one result's headline metrics (and optionally its weakest classes)."""
    table = Table(title=f"{r.model} on {Path(r.dataset).parent.name or r.dataset} ({r.images} images)")
    table.add_column("metric")
    for t in r.metrics:
        table.add_column(f"{t} %", justify="right")
    for k in HEADLINE_KEYS:
        table.add_row(k, *(_f(r.metrics[t].get(k)) for t in r.metrics))
    for c in sorted(r.per_class.get("bbox", []), key=lambda c: c.ap50_95 or 0.0)[:top_classes]:
        seg = {x.category_id: x.ap50_95 for x in r.per_class.get("segm", [])}
        table.add_row(f"  {c.name} ({c.instances})", _f(c.ap50_95), *([_f(seg.get(c.category_id))] if seg else []))
    return table


def comparison_table(cmp: Comparison, top_classes: int = 5) -> Table:
    """A rich table: metric | a | b | b - a, then the classes that lose the most."""
    table = Table(title=f"{cmp.b.model} vs {cmp.a.model} (baseline), in %")
    for name, justify in (("metric", "left"), (cmp.a.model, "right"), (cmp.b.model, "right"), ("Δ points", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for m in cmp.metrics:
        if m.metric in HEADLINE_KEYS:
            table.add_row(f"{m.iou_type} {m.metric}", _f(m.a), _f(m.b), _styled_delta(m.delta))
    ta, tb = cmp.a.timings_ms.get("total"), cmp.b.timings_ms.get("total")
    if ta is not None and tb is not None:
        table.add_row("ms/img", f"{ta:.1f}", f"{tb:.1f}", f"{tb - ta:+.1f}")
    for c in cmp.largest_drops(top_classes):
        table.add_row(f"  bbox AP {c.name} ({c.instances})", _f(c.a), _f(c.b), _styled_delta(c.delta))
    captions = ([_interval_note(cmp)] if cmp.intervals else []) + (
        ["[yellow]not like for like: " + "; ".join(cmp.warnings) + "[/]"] if cmp.warnings else [])
    if captions:
        table.caption = "\n".join(captions)
        table.caption_justify = "left"
    return table


def print_result(r: ValidationResult, console: Console | None = None, top_classes: int = 0) -> None:
    """Print one result as a rich table, with its counts and timings below."""
    console = console or Console()
    console.print(result_table(r, top_classes))
    console.print(f"{_counts(r)}; mean ms/img: {_ms(r)}", highlight=False)


def print_comparison(cmp: Comparison, console: Console | None = None, top_classes: int = 5) -> None:
    """Print a comparison as a rich table (both results side by side with the difference)."""
    (console or Console()).print(comparison_table(cmp, top_classes))


# ---------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |", *(f"| {' | '.join(r)} |" for r in rows)]


def result_markdown(r: ValidationResult) -> str:
    """One result as Markdown: settings, all metrics, per-class AP."""
    s = r.settings
    lines = [
        f"## {r.model}",
        "",
        f"- dataset: `{r.dataset}` ({_counts(r)})",
        f"- task: {r.task}; conf {s.get('conf')}, NMS IoU {s.get('iou')}, max_det {s.get('max_det')}, "
        f"multi_label {s.get('multi_label')}; labels mapped by {s.get('label_mapping')}; {s.get('backend')}",
        f"- mean ms/img: {_ms(r)}",
        f"- {UNITS_NOTE}",
        "",
    ]
    keys = list(next(iter(r.metrics.values()), {}))
    lines += _md_table(["metric", *r.metrics], [[k, *(_f(r.metrics[t].get(k)) for t in r.metrics)] for k in keys])
    seg = {c.category_id: c for c in r.per_class.get("segm", [])}
    header = ["class", "instances", "box AP50-95", "box AP50", *(["mask AP50-95", "mask AP50"] if seg else [])]
    rows = []
    for c in r.per_class.get("bbox", []):
        m = seg.get(c.category_id)
        rows.append([c.name, str(c.instances), _f(c.ap50_95), _f(c.ap50), *([_f(m.ap50_95), _f(m.ap50)] if m else [])])
    return "\n".join([*lines, "", "### Per-class AP", "", *_md_table(header, rows), ""])


def comparison_markdown(cmp: Comparison) -> str:
    """A comparison as Markdown: every metric of both with the difference, then per-class AP."""
    a, b = cmp.a.model, cmp.b.model
    lines = [f"## {b} vs {a} (baseline)", "", f"{UNITS_NOTE}.", ""]
    lines += [f"> **Warning:** {w}" for w in cmp.warnings] + ([""] if cmp.warnings else [])
    lines += _md_table(["metric", a, b, "Δ"], [[f"{m.iou_type} {m.metric}", _f(m.a), _f(m.b), _d(m.delta)] for m in cmp.metrics])
    ta, tb = cmp.a.timings_ms.get("total"), cmp.b.timings_ms.get("total")
    if ta is not None and tb is not None:
        lines.append(f"| ms/img | {ta:.1f} | {tb:.1f} | {tb - ta:+.1f} |")
    if cmp.intervals:
        lines += ["", _interval_note(cmp)]
    rows = [[f"{c.iou_type} {c.name}", str(c.instances), _f(c.a), _f(c.b), _d(c.delta)] for c in cmp.per_class]
    lines += ["", "### Per-class AP50-95", "", *_md_table(["class", "instances", a, b, "Δ"], rows)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """Where :func:`write_report` writes: ``dir/`` (or an existing dir) -> dir/report.{md,json};
    anything else is a prefix (a ``.md``/``.json`` suffix is dropped). Creates nothing."""
    out_s = str(out)
    p = Path(out)
    if p.is_dir() or out_s.endswith((os.sep, "/")):
        p = p / "report"
    elif p.suffix in (".md", ".json"):
        p = p.with_suffix("")
    return p.parent / f"{p.name}.md", p.parent / f"{p.name}.json"


def write_report(
    results: ValidationResult | Comparison | Sequence[ValidationResult], out_dir_or_prefix: str | Path
) -> tuple[Path, Path]:
    """Write a Markdown and a JSON report (each atomically); returns their paths.

    Args:
        results: one result, a comparison, or several results (each later one is compared
            against the first, the baseline).
        out_dir_or_prefix: a directory (an existing one, or a path ending in '/') gets
            ``report.md`` and ``report.json``; otherwise ``<prefix>.md`` and ``<prefix>.json``.
    """
    if isinstance(results, Comparison):
        runs, comparisons = [results.a, results.b], [results]
    else:
        runs = [results] if isinstance(results, ValidationResult) else list(results)
        comparisons = [compare(runs[0], r) for r in runs[1:]]
    md_path, json_path = report_paths(out_dir_or_prefix)
    title = "# Validation report" + (f": {runs[0].model}" if len(runs) == 1 else "")
    sections = [title, "", *(comparison_markdown(c) for c in comparisons), *(result_markdown(r) for r in runs)]
    payload = {"results": [r.to_json() for r in runs], "comparisons": [c.to_json() for c in comparisons]}
    write_text_atomic(md_path, "\n".join(sections))
    write_text_atomic(json_path, json.dumps(payload, indent=1) + "\n")
    return md_path, json_path
