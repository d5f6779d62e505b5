"""COCO ground truth for validation: loading with clear errors, image checks, label mapping.

A model speaks in class indices into its own ``labels``; a COCO json speaks in category ids
(the official 80 COCO classes use the non-contiguous ids 1..90). ``build_label_map`` decides how
one maps onto the other: by class name when the model's labels name the dataset's categories (this
survives reordered or subset label lists), otherwise by index.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.eval.errors import DatasetError
from edgeq.meta.verify import json_depth

#: Largest COCO json read: instances_train2017.json, the largest official file, is 448 MB.
MAX_COCO_BYTES = 512 << 20
#: Deepest nesting accepted (a COCO instances json nests 5 levels: polygons in annotations).
MAX_COCO_DEPTH = 32
_COCO_FIX = "check that it is a COCO instances file (images, annotations, categories)"

# Official COCO category id of each of the 80 YOLO class indices (index = class id).
COCO80_TO_COCO91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

# Darknet/VOC spellings of COCO classes still found in older label files.
_NAME_ALIASES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
}


def _norm(name: str) -> str:
    """Compare names case-, space-, '-' and '_'-insensitively ("Potted_Plant" == "potted plant")."""
    key = re.sub(r"[\s_\-]+", "", str(name).strip().lower())
    return _NAME_ALIASES.get(key, key)


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances json, checking the keys and types evaluation needs.

    Checked: at most ``MAX_COCO_BYTES`` and ``MAX_COCO_DEPTH`` levels of nesting, UTF-8 JSON whose
    top level is an object; ``images`` a list of objects with an integer ``id`` and a string
    ``file_name`` (integer ``width``/``height`` when present); ``annotations`` (optional) a list of
    objects with integer ``id``, ``image_id``, ``category_id``, a ``bbox`` of four numbers and, when
    present, a numeric ``area``, an integer or boolean ``iscrowd`` and a ``segmentation`` that is
    a list of polygons (lists of numbers) or an RLE object; ``categories`` a non-empty list of
    objects with an integer ``id`` (and a string ``name`` when present).

    Raises:
        DatasetError: the file is missing, too large, not JSON, or a field is missing or has the
            wrong type (the message names it, e.g. ``annotations[12].bbox``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO json not found: {path}", "pass the instances.json of the validation set")
    try:
        size = path.stat().st_size
        if size > MAX_COCO_BYTES:
            raise DatasetError(
                f"COCO json {path} is {size / 2**20:.0f} MiB, more than the {MAX_COCO_BYTES >> 20} MiB edgeq reads",
                "validate on a smaller split (instances_val2017.json is 25 MB)",
            )
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read COCO json {path}: {e.strerror or e}") from None
    if json_depth(raw, MAX_COCO_DEPTH) > MAX_COCO_DEPTH:
        raise DatasetError(f"cannot parse COCO json {path}: it nests more than {MAX_COCO_DEPTH} levels deep", _COCO_FIX)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse COCO json {path}: {e}", "check that it is a COCO instances file") from e
    except (ValueError, RecursionError) as e:  # e.g. an integer beyond Python's digit limit
        raise DatasetError(f"cannot parse COCO json {path}: {e}", _COCO_FIX) from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a COCO instances json (its top level is {_kind(data)}, not an object)", _COCO_FIX)
    if "images" not in data or data["images"] is None:
        raise DatasetError(f"{path} is not a COCO instances json (no 'images' list)")
    if not data.get("categories"):
        raise DatasetError(f"{path} has no 'categories'", "a COCO instances json lists the categories it labels")
    if data.get("annotations") is None:
        data["annotations"] = []
    if not isinstance(data.get("info", {}), dict):
        raise DatasetError(f"{path}: field info is {_kind(data['info'])}, expected an object", _COCO_FIX)
    _check_records(path, data, "images", _IMAGE_FIELDS)
    _check_records(path, data, "annotations", _ANNOTATION_FIELDS)
    _check_records(path, data, "categories", _CATEGORY_FIELDS)
    data.setdefault("info", {})
    return data


def _kind(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _is_bbox(v: Any) -> bool:
    return type(v) is list and len(v) == 4 and all(type(x) is int or type(x) is float for x in v)


def _is_segmentation(v: Any) -> bool:
    if type(v) is list:  # polygons
        return all(type(p) is list and all(type(x) is int or type(x) is float for x in p) for p in v)
    if type(v) is dict:  # RLE: counts (list of ints, or compressed string) and size [h, w]
        counts, size = v.get("counts"), v.get("size")
        ok_counts = type(counts) is str or (type(counts) is list and all(type(c) is int for c in counts))
        return ok_counts and type(size) is list and len(size) == 2 and all(type(x) is int for x in size)
    return False


# field -> (check, required, expected)
_Fields = dict[str, tuple[Any, bool, str]]
_IMAGE_FIELDS: _Fields = {
    "id": (_is_int, True, "an integer"),
    "file_name": (lambda v: type(v) is str and v != "", True, "a non-empty string"),
    "width": (_is_int, False, "an integer"),
    "height": (_is_int, False, "an integer"),
}
_ANNOTATION_FIELDS: _Fields = {
    "id": (_is_int, True, "an integer"),
    "image_id": (_is_int, True, "an integer"),
    "category_id": (_is_int, True, "an integer"),
    "bbox": (_is_bbox, True, "a list of four numbers [x, y, w, h]"),
    "area": (_is_num, False, "a number"),
    "iscrowd": (lambda v: type(v) in (int, bool), False, "0 or 1"),
    "segmentation": (_is_segmentation, False, "a list of polygons or an RLE object {counts, size}"),
}
_CATEGORY_FIELDS: _Fields = {
    "id": (_is_int, True, "an integer"),
    "name": (lambda v: type(v) is str, False, "a string"),
}


def _check_records(path: Path, data: dict[str, Any], key: str, fields: _Fields) -> None:
    """Every record of ``data[key]`` is an object whose ``fields`` have the expected types."""
    records = data[key]
    if not isinstance(records, list):
        raise DatasetError(f"{path}: field {key} is {_kind(records)}, expected a list", _COCO_FIX)
    checks = list(fields.items())
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            raise DatasetError(f"{path}: {key}[{i}] is {_kind(rec)}, expected an object", _COCO_FIX)
        for name, (ok, required, expected) in checks:
            v = rec.get(name)
            if v is None:
                if required:
                    raise DatasetError(f"{path}: {key}[{i}] has no {name!r}", _COCO_FIX)
                continue
            if not ok(v):
                raise DatasetError(f"{path}: field {key}[{i}].{name} is {_kind(v)}, expected {expected}", _COCO_FIX)


def select_images(
    data: Mapping[str, Any], images_dir: str | Path, json_path: str | Path, max_images: int | None
) -> list[dict[str, Any]]:
    """The image records to validate (json order, first ``max_images``), all present on disk.

    Raises:
        DatasetError: no images to validate, the folder is missing, or listed images are absent.
    """
    images_dir = Path(images_dir)
    records = list(data["images"])[: max_images if max_images is not None else None]
    if not records:
        why = "max_images=0" if max_images == 0 else f"{json_path} lists no images"
        raise DatasetError(f"no images to validate ({why})")
    if not images_dir.is_dir():
        raise DatasetError(f"image folder not found: {images_dir}", "pass the folder holding the json's file_name entries")
    missing = [r["file_name"] for r in records if not (images_dir / r["file_name"]).is_file()]
    if missing:
        first = ", ".join(missing[:3])
        raise DatasetError(
            f"{len(missing)} of {len(records)} images listed in {json_path} are missing from {images_dir} (first: {first})",
            "point images at the folder that holds them, or use the json that belongs to this folder",
        )
    return records


@dataclass(frozen=True)
class LabelMap:
    """Model class index -> dataset category id.

    Attributes:
        mode: ``name``, ``index`` or ``explicit`` (how the mapping was made).
        ids: class index -> category id; classes absent here are not in the dataset.
    """

    mode: str
    ids: dict[int, int]

    def category_ids(self, class_ids: np.ndarray) -> np.ndarray:
        """Category id per detection, -1 where the class is not a dataset category."""
        return np.array([self.ids.get(int(c), -1) for c in class_ids], dtype=np.int64)


def build_label_map(
    labels: Sequence[str], categories: Sequence[Mapping[str, Any]], class_map: Mapping[int, int] | None = None
) -> LabelMap:
    """Map the model's class indices onto the dataset's category ids.

    By name when the labels name the categories: every category is matched (a subset dataset such
    as person-only COCO), or at least half the model's labels are. Otherwise by index: an 80-class
    model onto the official COCO ids, or N classes onto N categories sorted by id.

    Raises:
        DatasetError: no mapping can be inferred (then pass ``class_map``).
    """
    cat_ids = sorted(int(c["id"]) for c in categories)
    if class_map is not None:
        return LabelMap("explicit", {int(k): int(v) for k, v in class_map.items() if int(v) in cat_ids})
    by_name = {_norm(c["name"]): int(c["id"]) for c in categories if "name" in c}
    matched = {i: by_name[_norm(n)] for i, n in enumerate(labels) if _norm(n) in by_name}
    if matched and (len(set(matched.values())) == len(cat_ids) or len(matched) * 2 >= len(labels)):
        return LabelMap("name", matched)
    if len(labels) in (0, 80) and set(cat_ids) <= set(COCO80_TO_COCO91):
        # No (usable) names: assume the official 80-class order, the YOLO convention.
        return LabelMap("index", {i: c for i, c in enumerate(COCO80_TO_COCO91) if c in cat_ids})
    if len(labels) == len(cat_ids):
        return LabelMap("index", dict(enumerate(cat_ids)))
    raise DatasetError(
        f"cannot map the model's {len(labels)} classes onto the dataset's {len(cat_ids)} categories "
        "(no class names match and the counts differ)",
        "pass class_map={class_index: category_id}",
    )
