"""Comparison and report rendering: rich tables, Markdown and JSON files, result round trips."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from edgeq.eval import ClassAP, Comparison, ValidationResult, compare, print_comparison, print_result, write_report


def make_result(model: str, box: float, mask: float | None = None, person: float = 0.5, **settings) -> ValidationResult:
    """A synthetic result; ``box``/``mask`` set every metric of that iou type."""
    keys = ("mAP50-95", "mAP50", "mAP75", "mAP_small", "recall")
    metrics = {"bbox": {k: box for k in keys}}
    per_class = {"bbox": [ClassAP("person", 1, 10, person, 0.9), ClassAP("car", 3, 4, box, None)]}
    if mask is not None:
        metrics["segm"] = {k: mask for k in keys}
        per_class["segm"] = [ClassAP("person", 1, 10, mask, 0.8), ClassAP("car", 3, 4, mask, 0.7)]
    metrics["bbox"]["mAP_small"] = None  # COCOeval's -1: nothing to average
    return ValidationResult(
        model=model,
        task="segment" if mask is not None else "detect",
        dataset="/data/coco-val-dev/instances.json",
        images=69,
        instances=14,
        detections=100,
        dropped=0,
        metrics=metrics,
        per_class=per_class,
        settings={"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True, "label_mapping": "name", **settings},
        timings_ms={"inference": 10.0, "total": 12.5},
    )


@pytest.fixture
def pair() -> tuple[ValidationResult, ValidationResult]:
    return make_result("float", 0.456, 0.352, person=0.6), make_result("int8", 0.430, 0.340, person=0.5)


def test_compare_deltas(pair: tuple[ValidationResult, ValidationResult]) -> None:
    cmp = compare(*pair)
    assert cmp.delta("mAP50-95") == pytest.approx(0.430 - 0.456)
    assert cmp.delta("mAP50-95", "segm") == pytest.approx(0.340 - 0.352)
    assert cmp.delta("mAP_small") is None
    assert cmp.largest_drops(1)[0].name == "person"
    assert cmp.warnings == []


def test_compare_flags_unlike_runs() -> None:
    a = make_result("a", 0.4)
    b = make_result("b", 0.4, iou=0.6)
    b.images = 10
    warnings = compare(a, b).warnings
    assert any("iou" in w for w in warnings) and any("image counts" in w for w in warnings)


def test_result_json_round_trip(pair: tuple[ValidationResult, ValidationResult], tmp_path: Path) -> None:
    r = pair[0]
    assert ValidationResult.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert ValidationResult.load(r.save(tmp_path / "r.json")) == r


def test_rich_rendering(pair: tuple[ValidationResult, ValidationResult]) -> None:
    console = Console(record=True, width=140)
    print_comparison(compare(*pair), console=console)
    print_result(pair[0], console=console, top_classes=2)
    text = console.export_text()
    # metrics in percent, differences in percentage points
    for s in ("float", "int8", "bbox mAP50-95", "segm mAP50", "45.6", "43.0", "-2.60", "Δ points", "bbox %", "ms/img", "person"):
        assert s in text, s


def test_write_report_to_directory(pair: tuple[ValidationResult, ValidationResult], tmp_path: Path) -> None:
    md, js = write_report(list(pair), tmp_path)
    assert (md, js) == (tmp_path / "report.md", tmp_path / "report.json")
    text = md.read_text()
    assert "## int8 vs float (baseline)" in text
    assert "| bbox mAP50-95 | 45.6 | 43.0 | -2.60 |" in text
    assert "| segm person | 10 | 35.2 | 34.0 | -1.20 |" in text
    assert "| mAP_small | – | 35.2 |" in text  # None renders as a dash
    assert "in %; Δ in percentage points" in text
    data = json.loads(js.read_text())
    assert [ValidationResult.from_json(r) for r in data["results"]] == list(pair)
    (c,) = data["comparisons"]
    row = next(m for m in c["metrics"] if m["metric"] == "mAP50-95" and m["iou_type"] == "bbox")
    assert row["delta"] == pytest.approx(-0.026)


def test_write_report_prefix_and_single(pair: tuple[ValidationResult, ValidationResult], tmp_path: Path) -> None:
    md, js = write_report(pair[0], tmp_path / "out" / "yolov8n")
    assert md == tmp_path / "out" / "yolov8n.md" and js.exists()
    assert "# Validation report: float" in md.read_text()
    assert json.loads(js.read_text())["comparisons"] == []
    md2, _ = write_report(compare(*pair), str(tmp_path / "new") + "/")
    assert md2 == tmp_path / "new" / "report.md"
    assert isinstance(compare(*pair), Comparison)
