"""The graph stage: load and normalize the ONNX model, find its head through the family registry,
cut it there (``smart``) and equalize, if asked.

Image-free, so ``edgeq analyze`` and attribution rebuild exactly the float graph an artifact was
cut from out of the settings the artifact records.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeq.calib.preprocess import InputConvention
from edgeq.errors import ArtifactError, EdgeqError
from edgeq.families import discover_head, get_family
from edgeq.graph.heads import HeadSpec, apply_split_hints
from edgeq.graph.load import LoadedModel, load_model
from edgeq.graph.passes.equalize import equalize
from edgeq.graph.passes.normalize_boxes import normalize_boxes


@dataclass
class Prepared:
    """The float graph to quantize and how it relates to the source model."""

    loaded: LoadedModel
    graph: onnx.ModelProto
    head: HeadSpec | None
    normalized_boxes: bool
    techniques: dict[str, Any] = field(default_factory=dict)
    #: the float graph before weight rounding: what the guard checks the artifact against
    reference: onnx.ModelProto | None = None
    #: the input values the model takes (its head family's; the default for ``combined``)
    input_convention: InputConvention = field(default_factory=InputConvention)


def load_hints(path: Path) -> list[dict[str, Any]]:
    """EdgeFirst ``split_hints`` from a JSON or YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise EdgeqError(f"cannot read split hints {path}: {e.strerror}", "check the --split-hints path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # optional: only for YAML hint files

        data = yaml.safe_load(text)
    return data.get("split_hints", data) if isinstance(data, dict) else data


def _embedded_hints(loaded: LoadedModel) -> list[dict[str, Any]]:
    text = loaded.info.props.get("split_hints") or loaded.info.props.get("edgefirst")
    if not text:
        return []
    data = json.loads(text)
    return data.get("split_hints", []) if isinstance(data, dict) else data


def prepare(model_path: str | Path, *, split: str = "smart", split_hints: Path | list[dict[str, Any]] | None = None,
            equalized: bool = False) -> Prepared:
    """Load, normalize and (for ``smart``) cut the graph at the head its family discovers.

    Args:
        model_path: the float ONNX model.
        split: ``smart`` (cut at the head's endpoints) or ``combined`` (whole graph).
        split_hints: EdgeFirst ``split_hints`` (a file, or the hints themselves) checked against
            the head; else the model's own. The hints applied are kept in ``techniques``.
        equalized: apply cross-layer equalization to the exact conv pairs.
    """
    loaded = load_model(model_path)
    if split == "combined":
        normalized = normalize_boxes(loaded.model, loaded.info.imgsz)
        return _equalized(Prepared(loaded, loaded.model, None, normalized), equalized)
    head = discover_head(loaded.model, loaded.info)
    if isinstance(split_hints, (str, Path)):
        hints = load_hints(Path(split_hints))
    else:
        hints = split_hints or _embedded_hints(loaded)
    if hints:
        head = apply_split_hints(head, hints)
    graph = get_family(head.family).cut(loaded.model, head)
    prep = Prepared(loaded, graph, head, False, input_convention=get_family(head.family).input_convention)
    if hints:
        prep.techniques["split_hints"] = hints
    return _equalized(prep, equalized)


def prepare_as_recorded(model_path: str | Path, provenance: Mapping[str, Any], artifact: str | Path) -> Prepared:
    """The float graph ``artifact`` was cut from, rebuilt from the settings its provenance records
    (split, split hints, equalization), after checking ``model_path`` is the model it came from.

    Raises:
        ArtifactError: the model's sha256 differs from the recorded source, or the split is unknown.
    """
    config = provenance.get("config") or {}
    split = provenance.get("split") or config.get("split") or "smart"
    if split not in ("smart", "combined"):
        raise ArtifactError(f"{artifact}: unknown split {split!r} in its edgeq provenance")
    prep = prepare(model_path, split=split, split_hints=provenance.get("split_hints"),
                   equalized=bool(config.get("equalize", False)))
    source = provenance.get("source") or {}
    recorded = source.get("sha256")
    if recorded and recorded != prep.loaded.info.source_sha256:
        raise ArtifactError(
            f"{model_path} is not the model {artifact} was converted from: its sha256 is "
            f"{prep.loaded.info.source_sha256[:16]}..., the artifact records {source.get('file', '?')} "
            f"with {recorded[:16]}...",
            f"pass the float ONNX the artifact was converted from ({source.get('file', 'see `edgeq inspect`')})",
        )
    return prep


def _equalized(prep: Prepared, enabled: bool) -> Prepared:
    """Cross-layer equalization of the exact conv pairs, if enabled (data-free)."""
    if enabled:
        eq = equalize(prep.graph)
        prep.graph = eq.model
        prep.techniques["equalize"] = eq.record
    return prep


__all__ = ["Prepared", "load_hints", "prepare", "prepare_as_recorded"]
