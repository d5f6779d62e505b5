"""Embed metadata in an artifact as an appended ZIP, and read it back.

TFLite (and HEF/engine) files carry a ZIP after the model bytes, as EdgeFirst and TFLite-Support's
associated files do; ``zipfile.ZipFile(path)`` finds it from the end-of-central-directory record.
ONNX models keep the JSON in ``metadata_props`` (``edgefirst``, ``labels``). Entries are written
with a fixed timestamp so the same input gives byte-identical artifacts.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from edgeq.errors import ArtifactError

EDGEFIRST_JSON = "edgefirst.json"
LABELS_TXT = "labels.txt"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def metadata_files(meta_json: dict[str, Any], labels: list[str]) -> dict[str, bytes]:
    """The associated files edgeq embeds: edgefirst.json and labels.txt."""
    text = json.dumps(meta_json, indent=1, sort_keys=False) + "\n"
    return {EDGEFIRST_JSON: text.encode(), LABELS_TXT: ("\n".join(labels) + "\n").encode()}


def append_zip(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """Model bytes followed by a ZIP whose offsets are relative to the start of the whole file."""
    buf = io.BytesIO()
    buf.write(model_bytes)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def zip_start(data: bytes) -> int | None:
    """Offset where an appended ZIP starts (the model bytes end), or None if there is none."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            return min(i.header_offset for i in infos) if infos else None
    except zipfile.BadZipFile:
        return None


def read_embedded(path: str | Path) -> dict[str, bytes]:
    """All files embedded in an artifact's ZIP trailer (empty dict if it has none)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e


def read_labels(files: dict[str, bytes]) -> list[str]:
    text = files.get(LABELS_TXT, b"").decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()]
