"""Errors raised by validation; both are ``EdgeqError`` so the CLI reports them without a traceback."""
from __future__ import annotations

from edgeq.errors import EdgeqError


class DatasetError(EdgeqError):
    """The validation data (COCO json or image folder) is missing, unreadable or inconsistent."""


class PredictionError(EdgeqError):
    """A predictor returned detections that cannot be evaluated (e.g. masks of the wrong size)."""
