"""ConvertConfig validates itself: bad settings fail when the config is made, before any work."""
from __future__ import annotations

import pytest

from conftest import shared_path
from edgeq.config import RANGE_METHODS, ConvertConfig
from edgeq.errors import ConfigError, EdgeqError


@pytest.mark.parametrize("options,needle", [
    (dict(split="diagonal"), "unknown split 'diagonal'"),
    (dict(target="coreml"), "unknown target 'coreml'"),
    (dict(calib_method="kl"), "unknown calib_method 'kl'"),
    (dict(output_method="p99"), "unknown output_method 'p99'"),
    (dict(weight_rounding="adaround"), "unknown weight_rounding 'adaround'"),
    (dict(int16_budget=0), "int16_budget must be a percentage"),
    (dict(int16_budget=150.0), "int16_budget must be a percentage"),
    (dict(int16_budget=float("nan")), "int16_budget must be a percentage"),
    (dict(int16="boxes_0"), "int16 must be tensor names"),
    (dict(int16=("boxes_0", "")), "int16 must be tensor names"),
    (dict(calib_count=0), "calib_count must be a positive"),
    (dict(threads=-2), "threads must be a positive"),
    (dict(equalize="yes"), "equalize must be True or False"),
    (dict(split="combined", split_hints="hints.yaml"), "split_hints name the smart cut"),
])
def test_bad_settings_are_rejected_with_the_option_and_a_fix(options, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        ConvertConfig(**options)
    assert info.value.option in options and isinstance(info.value, EdgeqError)
    assert info.value.fix or "split_hints" not in options


def test_error_lists_the_accepted_values():
    with pytest.raises(ConfigError) as info:
        ConvertConfig(calib_method="kl")
    assert all(m in info.value.fix for m in RANGE_METHODS)


def test_cli_flag_names_replace_field_names():
    e = ConfigError("unknown calib_method 'kl'", "use one of: auto", option="calib_method").for_flag("--calib-method")
    assert e.what == "unknown --calib-method 'kl'" and e.option == "--calib-method"


def test_valid_settings_are_kept_and_normalized():
    cfg = ConvertConfig(int16=["boxes_0"], int16_budget=5, calib_count=10, threads=2, split_hints="h.yaml")
    assert cfg.int16 == ("boxes_0",) and cfg.split_hints.name == "h.yaml" and cfg.target == "tflite"
    assert cfg.to_json()["split_hints"] == "h.yaml"


def test_python_api_fails_before_calibration(tmp_path, monkeypatch):
    """An unknown --int16 tensor name is found on the graph, before any calibration image is read."""
    import edgeq.pipeline as pipeline

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration started")

    monkeypatch.setattr(pipeline, "calibration_set", no_calibration)
    out = tmp_path / "m.tflite"
    with pytest.raises(EdgeqError, match="'nope' is not an activation tensor"):
        pipeline.convert(shared_path("models", "yolov8n.onnx"), tmp_path, out, ConvertConfig(int16=("nope",)))
    assert not out.exists()
