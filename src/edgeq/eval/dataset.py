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
    """Read a COCO instances json, checking the keys evaluation needs.

    Raises:
        DatasetError: the file is missing, not JSON, or lacks ``images``/``categories``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO json not found: {path}", "pass the instances.json of the validation set")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse COCO json {path}: {e}", "check that it is a COCO instances file") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not a COCO instances json (no 'images' list)")
    if not data.get("categories"):
        raise DatasetError(f"{path} has no 'categories'", "a COCO instances json lists the categories it labels")
    data.setdefault("annotations", [])
    data.setdefault("info", {})
    return data


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
