"""Run converted artifacts and ONNX models: ``edgeq.runtime.load(path).predict(image)``."""
from __future__ import annotations

from edgeq.runtime.artifact import Model, load
from edgeq.runtime.decoder import Decoder
from edgeq.runtime.types import Detections, Predictor

__all__ = ["Decoder", "Detections", "Model", "Predictor", "load"]
