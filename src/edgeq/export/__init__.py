"""The target registry: one package per deployment format, one line here.

Adding a target: write ``edgeq/export/NAME/`` with a :class:`~edgeq.export.base.Target` subclass
(constraints, emitter, runtime backend, probe, embedding), add ``"NAME": "module:Class"`` to
:data:`TARGETS`, and add its tests. Entries are imported on first use, so a target whose
toolchain is an optional extra costs nothing until it is asked for.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

from edgeq.errors import EdgeqError
from edgeq.export.base import Target

TARGETS: Mapping[str, str] = MappingProxyType({
    "tflite": "edgeq.export.tflite.target:TFLiteTarget",
})


@cache
def get_target(name: str) -> Target:
    """The registered target ``name``."""
    try:
        module, cls = TARGETS[name].split(":")
    except KeyError:
        raise EdgeqError(f"unknown target {name!r}", f"use one of: {', '.join(TARGETS)}") from None
    return getattr(importlib.import_module(module), cls)()


def target_for_file(path: Path) -> Target | None:
    """The target whose artifacts have ``path``'s suffix, or None."""
    return next((t for t in map(get_target, TARGETS) if t.owns(path)), None)


__all__ = ["TARGETS", "Target", "get_target", "target_for_file"]
