"""What edgeq writes: never an input, checked before the work, atomic, readable like any new file,
and the same bytes whatever the thread count."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import shared_path

from edgeq.calib.dataset import calibration_set, check_images
from edgeq.errors import CalibrationError
from edgeq.fileio import (
    OutputError,
    check_writable_output,
    current_umask,
    new_file_mode,
    write_atomic,
)


@pytest.fixture
def umask():
    """Set a umask for one test (and restore the old one)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may create files in: a chmod 555 folder, or /sys when running as root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro
    (ro / "probe").unlink()  # root ignores permissions
    if not os.access("/sys", os.F_OK):
        pytest.skip("running as root and no read-only folder to test with")
    return Path("/sys")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- write_atomic


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_new_file_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask and current_umask() == mask, "reading the umask must not change it"
    out = write_atomic(tmp_path / "sub" / "a.bin", b"data")
    assert out.read_bytes() == b"data"
    assert _mode(out) == 0o666 & ~mask == new_file_mode()
    plain = tmp_path / "plain"
    with open(plain, "w"):
        pass
    assert _mode(out) == _mode(plain), "the same mode as open(path, 'w')"
    assert _leftovers(out.parent) == []


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    out.chmod(0o640)
    write_atomic(out, b"new")
    assert out.read_bytes() == b"new" and _mode(out) == 0o640


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, exc):
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError if isinstance(exc, OSError) else KeyboardInterrupt) as e:
        write_atomic(out, b"new" * 1000)
    if isinstance(exc, OSError):
        assert "No space left" in e.value.what and e.value.fix
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_write_atomic_refuses_a_folder_and_an_unwritable_place(tmp_path):
    with pytest.raises(OutputError, match="existing folder"):
        write_atomic(tmp_path, b"x")
    ro = unwritable_folder(tmp_path)
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(ro / "a.bin", b"x")


# ----------------------------------------------------------------------------- check_writable_output


def test_check_refuses_inputs_under_any_name(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "link.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    for out in (model, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "x" / ".." / "m.onnx"):
        with pytest.raises(OutputError, match="is an input of this command") as e:
            check_writable_output(out, inputs=[tmp_path / "other", model], kind="artifact")
        assert str(out) in e.value.what and e.value.fix
    assert model.read_bytes() == b"model"


def test_check_refuses_folders_and_unwritable_places_and_creates_nothing(tmp_path):
    with pytest.raises(OutputError, match="existing folder") as e:
        check_writable_output(tmp_path)
    assert e.value.fix
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_output(tmp_path / "f" / "out.tflite")
    ro = unwritable_folder(tmp_path)
    with pytest.raises(OutputError, match="not writable") as e:
        check_writable_output(ro / "deep" / "out.tflite")
    assert str(ro) in e.value.what
    fresh = tmp_path / "new" / "deeper" / "out.tflite"
    assert check_writable_output(fresh) == fresh
    assert not (tmp_path / "new").exists(), "a check creates no folder"
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- calibration images


@pytest.fixture
def mixed_calib(tmp_path, calib_dir):
    folder = tmp_path / "calib"
    folder.mkdir()
    good = sorted((calib_dir / "images").iterdir())[:3]
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "b_text.jpg").write_text("not an image")
    (folder / "c_empty.png").write_bytes(b"")
    (folder / "d_cut.jpg").write_bytes(good[0].read_bytes()[:2000])
    return folder


def test_every_unreadable_image_is_reported_at_once(mixed_calib):
    cs = calibration_set(mixed_calib)
    assert len(cs) == 6
    with pytest.raises(CalibrationError) as e:
        check_images(cs)
    what = e.value.what
    assert "3 of 6 calibration images" in what
    for name, why in (("b_text.jpg", "not an image"), ("c_empty.png", "empty file"), ("d_cut.jpg", "corrupt JPEG")):
        assert f"{name}: {why}" in what
    assert "--skip-bad-images" in e.value.fix


def test_skip_bad_images_drops_and_counts_them(mixed_calib, caplog):
    with caplog.at_level(logging.WARNING):
        cs = check_images(calibration_set(mixed_calib), skip_bad=True)
    assert len(cs) == 3 and all(p.suffix == ".jpg" and "_" not in p.name for p in cs.paths)
    assert "skipped 3 unreadable calibration image(s) of 6" in caplog.text
    only_bad = calibration_set(mixed_calib / "b_text.jpg")
    with pytest.raises(CalibrationError, match="1 of 1"):
        check_images(only_bad, skip_bad=True)


def test_many_bad_images_are_listed_then_counted(tmp_path):
    for i in range(9):
        (tmp_path / f"{i}.jpg").write_text("x")
    with pytest.raises(CalibrationError, match=r"9 of 9 .*4\.jpg: .*and 4 more"):
        check_images(calibration_set(tmp_path))


def test_one_image_file_is_a_calibration_source(calib_dir, caplog):
    image = sorted((calib_dir / "images").iterdir())[0]
    cs = calibration_set(image)
    assert cs.paths == (image,) and check_images(cs) is cs
    from edgeq.calib.checks import check_calibration_set

    assert "only 1 calibration image " in check_calibration_set(cs, 640)[0].what
    coco = calibration_set(calib_dir / "instances.json", count=2)
    assert len(coco) == 2 and coco.files[-1] == calib_dir / "instances.json" and len(coco.files) == 201


# ----------------------------------------------------------------------------- validate and reports


def test_validate_skips_missing_images_and_counts_them(val_dev, tmp_path, caplog):
    from edgeq.eval import DatasetError, GroundTruthPredictor, validate, write_report

    data = val_dev / "instances.json"
    records = json.loads(data.read_text())["images"][:4]
    images = tmp_path / "images"
    images.mkdir()
    for r in records[:2] + records[3:]:
        (images / r["file_name"]).symlink_to(val_dev / "images" / r["file_name"])
    with caplog.at_level(logging.WARNING):
        r = validate(GroundTruthPredictor(data, val_dev / "images", with_masks=False), data, images, max_images=4,
                     progress=False)
    assert r.images == 3 and r.settings["missing_images"] == 1
    assert r.settings["missing_first"] == [records[2]["file_name"]]
    assert f"1 of 4 images listed in {data} are missing" in caplog.text
    md, js = write_report(r, tmp_path / "rep")
    assert "1 listed in the json but missing from the folder: skipped" in md.read_text()
    assert json.loads(js.read_text())["results"][0]["settings"]["missing_images"] == 1
    assert _mode(md) == new_file_mode() and _leftovers(tmp_path) == []
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match="4 of 4 images"):
        validate(GroundTruthPredictor(data, val_dev / "images", with_masks=False), data, tmp_path / "none",
                 max_images=4, progress=False)


def test_reports_and_results_are_written_atomically_with_normal_modes(tmp_path, umask):
    from edgeq.analysis.analyze import Analysis, check_report_paths, write_reports
    from edgeq.eval.coco import save_coco_results

    umask(0o022)
    a = Analysis(model="m.onnx", artifact="m.tflite", split="smart", images=1, tensors=[], layers=[],
                 artifact_error={"head_sqnr_db": 20.0, "raw_sqnr_db": 21.0, "kinds_db": {}, "outputs_db": {}},
                 total_elements=1, shared_tensors=0, float_tensors=0)
    paths = write_reports(a, tmp_path / "out" / "rep")
    assert [p.name for p in paths] == ["rep.md", "rep.html", "rep.json"]
    assert all(_mode(p) == 0o644 for p in paths)
    assert _mode(save_coco_results([], tmp_path / "dets.json")) == 0o644
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "out") == []
    with pytest.raises(OutputError, match="is an input"):
        check_report_paths(tmp_path / "dets", inputs=[tmp_path / "dets.json"])


# ----------------------------------------------------------------------------- determinism


def test_artifact_bytes_do_not_depend_on_the_thread_count(tmp_path, umask):
    """threads used to be recorded in the provenance, and onnxruntime's convolutions sum in another
    order from 4 threads on (yolov8n /model.7/conv: ~1 ulp), which moved ranges: both are gone."""
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert

    umask(0o022)
    model = shared_path("models", "yolov8n.onnx")
    digests = {}
    for threads in (1, 2, 4):
        res = convert(model, shared_path("coco-calib"), tmp_path / f"t{threads}.tflite",
                      ConvertConfig(threads=threads, calib_count=8, guard=False), progress=False)
        digests[threads] = hashlib.sha256(res.path.read_bytes()).hexdigest()
        assert _mode(res.path) == 0o644, "not mkstemp's 0600"
        assert "threads" not in res.meta.edgeq["config"]
    assert len(set(digests.values())) == 1, digests
    assert _leftovers(tmp_path) == []
