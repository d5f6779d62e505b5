"""COCO validation of any ``Predictor`` and float-vs-INT8 comparison reports.

    from edgeq.eval import validate, compare, print_comparison, write_report
    a = validate(float_model, "coco-val-dev/instances.json", "coco-val-dev/images")
    b = validate(int8_model, "coco-val-dev/instances.json", "coco-val-dev/images")
    print_comparison(compare(a, b))
    write_report([a, b], "reports/yolov8n")   # reports/yolov8n.md + .json
"""
from edgeq.eval.coco import detections_to_coco, encode_masks, evaluate_coco, validate
from edgeq.eval.dataset import COCO80_TO_COCO91, LabelMap, build_label_map, load_coco_json
from edgeq.eval.errors import DatasetError, PredictionError
from edgeq.eval.oracle import GroundTruthPredictor
from edgeq.eval.report import (
    ClassDelta,
    Comparison,
    MetricDelta,
    compare,
    comparison_markdown,
    print_comparison,
    print_result,
    result_markdown,
    write_report,
)
from edgeq.eval.result import ClassAP, ValidationResult

__all__ = [
    "COCO80_TO_COCO91",
    "ClassAP",
    "ClassDelta",
    "Comparison",
    "DatasetError",
    "GroundTruthPredictor",
    "LabelMap",
    "MetricDelta",
    "PredictionError",
    "ValidationResult",
    "build_label_map",
    "compare",
    "comparison_markdown",
    "detections_to_coco",
    "encode_masks",
    "evaluate_coco",
    "load_coco_json",
    "print_comparison",
    "print_result",
    "result_markdown",
    "validate",
    "write_report",
]
