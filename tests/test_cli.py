"""The CLI is a thin layer: help teaches, errors are clear (exit 2, no traceback), commands work."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

import cv2
import pytest
from conftest import shared_path
from typer.testing import CliRunner

from edgeq import __version__
from edgeq.cli import app
from edgeq.fileio import new_file_mode

runner = CliRunner()


def test_help_lists_commands_and_convert_explains_options():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("convert", "predict", "validate", "inspect"):
        assert cmd in out
    conv = runner.invoke(app, ["convert", "--help"]).output
    assert "--calib" in conv and "smart" in conv and "combined" in conv


def test_predict_draws_detections(tmp_path, val_dev):
    image = sorted((val_dev / "images").glob("*.jpg"))[0]
    out = tmp_path / "pred.png"
    r = runner.invoke(app, ["predict", str(shared_path("models", "yolov8n.onnx")), str(image), "-o", str(out)])
    assert r.exit_code == 0, r.output
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape
    assert "person" in r.output or "chair" in r.output


def test_inspect_onnx_and_peer_artifact(edgefirst_seg_smart):
    r = runner.invoke(app, ["inspect", str(shared_path("models", "yolov8n-seg.onnx")), "--json"])
    rep = json.loads(r.stdout)  # a plain export has no edgefirst.json: the summary, as JSON
    assert r.exit_code == 0 and rep["task"] == "segment"
    assert [o["name"] for o in rep["outputs"]][-1] == "protos"
    r = runner.invoke(app, ["inspect", str(edgefirst_seg_smart), "--json"])
    embedded = zipfile.ZipFile(edgefirst_seg_smart).read("edgefirst.json").decode()
    assert r.exit_code == 0 and r.stdout.rstrip("\n") == embedded.rstrip("\n"), "exactly the embedded edgefirst.json"
    rep = json.loads(r.stdout)
    assert rep["decoder_version"] == "yolov8" and rep["schema_version"] == 2 and len(rep["outputs"]) == 4
    r = runner.invoke(app, ["inspect", str(edgefirst_seg_smart)])
    assert r.exit_code == 0 and "protos" in r.stdout and "decoder_version" in r.stdout, "the summary goes to stdout"


def test_validate_runs_a_few_images(val_dev, tmp_path):
    r = runner.invoke(app, ["validate", str(shared_path("models", "yolov8n.onnx")), "--data", str(val_dev / "instances.json"),
                            "--max-images", "3", "-q", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "mAP50-95" in r.output and (tmp_path / "rep.md").is_file()


@pytest.mark.parametrize("args,needle", [
    (["convert", "{bad}", "--calib", "{calib}"], "not a valid ONNX model"),
    (["convert", "{model}", "--calib", "{tmp}/nowhere"], "calibration path not found"),
    (["convert", "{model}", "--calib", "{calib}", "--split", "diagonal"], "unknown --split 'diagonal'"),
    (["predict", "{tmp}/missing.tflite", "{bad}"], "not found"),
])
def test_errors_are_clear_and_exit_2(tmp_path, calib_dir, args, needle):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    subst = dict(bad=bad, calib=calib_dir, model=shared_path("models", "yolov8n.onnx"), tmp=tmp_path)
    r = runner.invoke(app, [a.format(**subst) for a in args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not list(tmp_path.glob("*.tflite"))


# ----------------------------------------------------------------------------- help, version, internal errors


COMMANDS = ("convert", "inspect", "predict", "validate", "analyze", "bench", "version")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default(command):
    """Every option that takes a value shows its default (or that it is required); rich markup
    used to eat the "[default: ...]" written into help texts ("Artifact path .")."""
    out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"}).output
    options = out.split("Options:", 1)[1]
    blocks = re.split(r"\n(?=  -)", options)
    for block in blocks:
        header = block.strip().split("  ")[0]
        if "<" in header:  # takes a value (flags are off unless given)
            assert "[default:" in block or "[required]" in block, block
    if command == "convert":
        assert "[default: <model>-<split>-int8.<target suffix> beside the model]" in " ".join(out.split())
        assert "[default: smart]" in out and "[default: all]" in out


def test_version_option_and_command():
    for args in (["--version"], ["version"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and r.stdout.strip() == __version__


def _no_traceback(r) -> None:
    assert "Traceback" not in r.output, r.output


def test_unexpected_errors_are_one_line_unless_verbose(monkeypatch, tmp_path):
    import edgeq.api

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(edgeq.api, "predict_image", boom)
    r = runner.invoke(app, ["predict", "m.onnx", "x.jpg"])
    assert r.exit_code == 1
    assert "error: internal error (RuntimeError: boom); rerun with --verbose for the traceback" in " ".join(r.output.split())
    _no_traceback(r)
    r = runner.invoke(app, ["--verbose", "predict", "m.onnx", "x.jpg"])
    assert r.exit_code == 1 and "Traceback" in r.output and "RuntimeError: boom" in r.output


# ----------------------------------------------------------------------------- convert: bad input never destroys data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _user_error(r, *needles: str) -> None:
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "error:" in text and "fix:" in text, r.output
    for n in needles:
        assert n in text, (n, r.output)
    _no_traceback(r)


def _unwritable_folder(tmp_path: Path) -> Path:
    from test_outputs import unwritable_folder

    return unwritable_folder(tmp_path)


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly (exit 1, not 2) if a conversion gets to its slow stages."""
    from edgeq import pipeline

    def started(*args, **kwargs):
        raise AssertionError("the conversion started")

    for name in ("round_weights", "calibrate", "export_artifact"):
        monkeypatch.setattr(pipeline, name, started)


@pytest.fixture
def work(tmp_path, calib_dir):
    """A private copy of the model and of 4 calibration images (symlinks would share inodes)."""
    model = tmp_path / "m.onnx"
    shutil.copy(shared_path("models", "yolov8n.onnx"), model)
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted((calib_dir / "images").iterdir())[:4]:
        shutil.copy(p, calib / p.name)
    return model, calib


@pytest.mark.parametrize("case", ["model", "symlink", "hardlink", "dotdot", "folder", "calib_image", "read_only", "below_a_file"])
def test_convert_refuses_outputs_before_any_work(case, work, tmp_path, no_work):
    model, calib = work
    image = sorted(calib.iterdir())[0]
    before = {p: _sha(p) for p in (model, image)}
    if case == "symlink":
        (tmp_path / "link.tflite").symlink_to(model)
    if case == "hardlink":
        os.link(model, tmp_path / "hard.tflite")
    if case == "folder":
        (tmp_path / "out").mkdir()
    out, needle = {
        "model": (model, "is an input of this command"),
        "symlink": (tmp_path / "link.tflite", "is an input of this command"),
        "hardlink": (tmp_path / "hard.tflite", "is an input of this command"),
        "dotdot": (tmp_path / "new" / ".." / "m.onnx", "is an input of this command"),
        "folder": (tmp_path / "out", "is an existing folder"),
        "calib_image": (image, "is an input of this command"),
        "read_only": (_unwritable_folder(tmp_path) / "m.tflite", "is not writable"),
        "below_a_file": (model / "m.tflite", "is a file, not a folder"),
    }[case]
    r = runner.invoke(app, ["convert", str(model), "--calib", str(calib), "-o", str(out), "-q"])
    _user_error(r, str(out) if case != "read_only" else "cannot write", needle)
    assert {p: _sha(p) for p in before} == before, "inputs unchanged"
    assert not list(tmp_path.rglob("*.tflite")) or case in ("symlink", "hardlink")
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "no temporary file left"
    assert not (tmp_path / "new").exists()


def test_convert_reports_every_bad_calibration_image_before_calibrating(work, tmp_path, no_work):
    model, calib = work
    (calib / "broken.jpg").write_text("not a jpeg")
    (calib / "empty.png").write_bytes(b"")
    r = runner.invoke(app, ["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "m.tflite"), "-q"])
    _user_error(r, "2 of 6 calibration images", "broken.jpg: not an image", "empty.png: empty file", "--skip-bad-images")
    assert not (tmp_path / "m.tflite").exists()


def test_convert_skips_bad_images_and_takes_a_single_image(work, tmp_path, umask_022, caplog):
    model, calib = work
    (calib / "broken.jpg").write_text("not a jpeg")
    out = tmp_path / "skip.tflite"
    r = runner.invoke(app, ["convert", str(model), "--calib", str(calib), "-o", str(out), "-q", "--skip-bad-images",
                            "--on-collapse", "warn"])  # 4 images cannot span the score range: the guard says so
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable calibration image(s) of 5" in caplog.text
    meta = json.loads(zipfile.ZipFile(out).read("edgefirst.json"))
    assert meta["edgeq"]["calibration"]["count"] == 4 and meta["edgeq"]["config"]["skip_bad_images"] is True
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 == new_file_mode(), "a normal file's mode, not mkstemp's 0600"
    one = tmp_path / "one.tflite"
    r = runner.invoke(app, ["convert", str(model), "--calib", str(sorted(calib.glob("0*.jpg"))[0]), "-o", str(one), "-q",
                            "--on-collapse", "warn"])  # one image cannot span the score range: the guard says so
    assert r.exit_code == 0, r.output
    assert "only 1 calibration image " in caplog.text
    assert json.loads(zipfile.ZipFile(one).read("edgefirst.json"))["edgeq"]["calibration"]["count"] == 1
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------- predict and validate


@pytest.fixture
def image_copy(tmp_path, val_dev):
    src = sorted((val_dev / "images").glob("*.jpg"))[0]
    dst = tmp_path / "img.jpg"
    shutil.copy(src, dst)
    return dst


def test_predict_missing_image(image_copy, tmp_path):
    r = runner.invoke(app, ["predict", str(shared_path("models", "yolov8n.onnx")), str(tmp_path / "nope.jpg")])
    _user_error(r, "image not found", "nope.jpg")


@pytest.mark.parametrize("case", ["txt", "no_suffix", "read_only", "input_image", "folder"])
def test_predict_checks_the_output_before_running(case, image_copy, tmp_path, monkeypatch):
    import edgeq.runtime

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(edgeq.runtime, "load", loaded)
    before = _sha(image_copy)
    out, needles = {
        "txt": (tmp_path / "x.txt", ("x.txt", "'.txt', which is not an image format", "x.png")),
        "no_suffix": (tmp_path / "x", ("it has no suffix",)),
        "read_only": (_unwritable_folder(tmp_path) / "x.png", ("cannot write", "is not writable")),
        "input_image": (image_copy, ("is an input of this command",)),
        "folder": (tmp_path, ("is an existing folder",)),
    }[case]
    r = runner.invoke(app, ["predict", str(shared_path("models", "yolov8n.onnx")), str(image_copy), "-o", str(out)])
    _user_error(r, *needles)
    assert _sha(image_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["img.jpg"]


def test_validate_skips_a_missing_image_and_refuses_to_overwrite_the_ground_truth(val_dev, tmp_path, caplog):
    data = tmp_path / "instances.json"
    shutil.copy(val_dev / "instances.json", data)
    records = json.loads(data.read_text())["images"][:3]
    images = tmp_path / "images"
    images.mkdir()
    for rec in (records[0], records[2]):
        (images / rec["file_name"]).symlink_to(val_dev / "images" / rec["file_name"])
    model = str(shared_path("models", "yolov8n.onnx"))
    before = _sha(data)
    r = runner.invoke(app, ["validate", model, "--data", str(data), "--max-images", "3", "-q", "--save-json", str(data)])
    _user_error(r, "is an input of this command")
    assert _sha(data) == before
    r = runner.invoke(app, ["validate", model, "--data", str(data), "--max-images", "3", "-q",
                            "--report", str(tmp_path / "rep"), "--save-json", str(tmp_path / "dets.json")])
    assert r.exit_code == 0, r.output
    assert "2 images (1 listed in the json but missing from the folder: skipped)" in " ".join(r.output.split())
    assert "1 of 3 images listed" in caplog.text and records[1]["file_name"] in caplog.text
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["results"][0]["settings"]["missing_images"] == 1
    assert len(json.loads((tmp_path / "dets.json").read_text())) > 0
    for f in ("rep.md", "rep.json", "dets.json"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == new_file_mode()
    shutil.rmtree(images)
    images.mkdir()
    r = runner.invoke(app, ["validate", model, "--data", str(data), "--max-images", "3", "-q"])
    _user_error(r, "3 of 3 images", "missing")


def test_analyze_checks_its_report_path_first(tmp_path, monkeypatch):
    import edgeq.analysis.analyze as analysis

    def started(*args, **kwargs):
        raise AssertionError("the analysis started")

    monkeypatch.setattr(analysis, "analyze", started)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "rep.md").mkdir()
    r = runner.invoke(app, ["analyze", str(model), str(tmp_path / "a.tflite"), "--images", str(tmp_path),
                            "--report", str(tmp_path / "rep")])
    _user_error(r, "rep.md is an existing folder")
