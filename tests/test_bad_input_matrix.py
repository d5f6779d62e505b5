"""The bad-input matrix a new user hit, one row per case, through the CLI as a user runs it.

Every row asserts: the exit code, the ``error:`` / ``fix:`` lines (or the warning, for the rows
whose right answer is to carry on), no traceback, nothing new left in the output folder, and every
input's sha256 unchanged.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from edgeq.cli import app
from edgeq.config import ConvertConfig
from edgeq.meta.embed import zip_start

runner = CliRunner()


@dataclass
class World:
    """The files one row works on: inputs (checked unchanged) and the folder outputs go to."""

    root: Path
    model: Path
    calib: Path
    artifact: Path
    image: Path
    val: Path
    out: Path


@pytest.fixture(scope="module")
def edgeq_artifact(tmp_path_factory) -> Path:
    from edgeq.pipeline import convert

    out = tmp_path_factory.mktemp("matrix") / "yolov8n.tflite"
    convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), out,
            ConvertConfig(calib_count=16, guard=False), progress=False)
    return out


@pytest.fixture
def world(tmp_path, edgeq_artifact) -> World:
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted((shared_path("coco-calib") / "images").iterdir())[:6]:
        shutil.copy(p, calib / p.name)
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    src = shared_path("coco-val-dev")
    import json

    gt = json.loads((src / "instances.json").read_text())
    gt["images"] = gt["images"][:3]
    keep = {i["id"] for i in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    (val / "instances.json").write_text(json.dumps(gt))
    for i in gt["images"]:
        shutil.copy(src / "images" / i["file_name"], val / "images" / i["file_name"])
    out = tmp_path / "out"
    out.mkdir()
    model = tmp_path / "yolov8n.onnx"
    shutil.copy(shared_path("models", "yolov8n.onnx"), model)
    artifact = tmp_path / "yolov8n.tflite"
    shutil.copy(edgeq_artifact, artifact)
    return World(tmp_path, model, calib, artifact, sorted(calib.iterdir())[0], val, out)


# -- how each row damages its inputs ---------------------------------------------------------------------


def _rezip(artifact: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> None:
    data = artifact.read_bytes()
    model = data[: zip_start(data)]
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, body in members.items():
            z.writestr(name, body)
    artifact.write_bytes(model + buf.getvalue())


def _corrupt_deflate(w: World) -> None:
    data = bytearray(w.artifact.read_bytes())
    start = zip_start(bytes(data))
    name_len, extra_len = struct.unpack("<HH", data[start + 26:start + 30])
    body = start + 30 + name_len + extra_len
    data[body:body + 16] = b"\xff" * 16  # the first member's deflate stream
    w.artifact.write_bytes(bytes(data))


def _damaged_eocd(w: World) -> None:
    data = bytearray(w.artifact.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 16:eocd + 20] = struct.pack("<I", len(data) * 2)  # central directory offset past the end
    w.artifact.write_bytes(bytes(data))


def _zip_bomb(w: World) -> None:
    """edgefirst.json deflated from 1 GiB of spaces (about 1 MB on disk), declared honestly."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk, parts, crc = b" " * (1 << 20), [], 0
    for _ in range(1024):
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(comp.flush())
    body = b"".join(parts)
    name = b"edgefirst.json"
    size = 1 << 30
    data = w.artifact.read_bytes()
    model = data[: zip_start(data)]
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(body), size, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(body), size, len(name),
                          0, 0, 0, 0, 0, 0) + name
    # offsets relative to the ZIP's start, as an appended ZIP (edgeq's, EdgeFirst's) writes them
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    w.artifact.write_bytes(model + local + body + central + eocd)


def _garbage_model_bytes(w: World) -> None:
    data = w.artifact.read_bytes()
    start = zip_start(data)
    rng = np.random.default_rng(0)
    w.artifact.write_bytes(rng.integers(0, 256, start, dtype=np.uint8).tobytes() + data[start:])


def _flipped_weights(w: World) -> None:
    data = bytearray(w.artifact.read_bytes())
    start = zip_start(bytes(data))
    for i in range(start // 2, start // 2 + 4096, 7):  # inside the weight buffers, structure intact
        data[i] ^= 0x5A
    w.artifact.write_bytes(bytes(data))


def _nan_weights(w: World) -> None:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(w.model))
    init = next(t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and numpy_helper.to_array(t).size > 100)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[:10] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(w.model))


def _odd_calibration(w: World) -> None:
    """Grey, 16-bit, RGBA, 1x1 and duplicated images only: the score range never reaches p = 0.5."""
    for p in list(w.calib.iterdir()):
        p.unlink()
    for i, p in enumerate(sorted((shared_path("coco-calib") / "images").iterdir())[:12]):
        grey = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(w.calib / f"grey{i}.png"), (grey.astype(np.uint16) * 257) if i % 3 == 0 else grey)
    cv2.imwrite(str(w.calib / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(w.calib / "rgba.png"), np.zeros((64, 64, 4), np.uint8))
    for k in range(3):
        cv2.imwrite(str(w.calib / f"dup{k}.png"), np.full((32, 32, 3), 128, np.uint8))


def _bad_calibration_image(w: World) -> None:
    (w.calib / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def _read_only(w: World) -> None:
    """A folder nobody may write to; root ignores mode bits, so as root it is /sys."""
    import os

    if os.geteuid() == 0:
        w.out = Path("/sys")
    else:
        w.out.chmod(0o555)


def _missing_val_image(w: World) -> None:
    next((w.val / "images").iterdir()).unlink()


def _nothing(w: World) -> None:
    pass


@dataclass(frozen=True)
class Row:
    name: str
    damage: Callable[[World], None]
    args: tuple[str, ...]
    exit_code: int
    needles: tuple[str, ...]


MATRIX = [
    Row("output is the source model", _nothing, ("convert", "{model}", "--calib", "{calib}", "-o", "{model}"), 2,
        ("yolov8n.onnx", "input")),
    Row("output in a read-only folder", _read_only, ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite"), 2,
        ("not writable",)),
    Row("output names an existing folder", _nothing, ("convert", "{model}", "--calib", "{calib}", "-o", "{out}"), 2,
        ("folder",)),
    Row("calibration images all odd", _odd_calibration, ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite"),
        2, ("can never exceed", "no artifact was written", "representative")),
    Row("a bad calibration image", _bad_calibration_image,
        ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite"), 2, ("zz_broken.jpg", "--skip-bad-images")),
    Row("an unknown --int16 name", _nothing,
        ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite", "--int16", "nope"), 2,
        ("'nope' is not an activation tensor",)),
    Row("an --int16-budget out of range", _nothing,
        ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite", "--int16-budget", "150"), 2,
        ("--int16-budget must be a percentage",)),
    Row("NaN weights in the ONNX", _nan_weights, ("convert", "{model}", "--calib", "{calib}", "-o", "{out}/m.tflite"), 2,
        ("NaN or infinite",)),
    Row("metadata: corrupt compressed data", _corrupt_deflate, ("inspect", "{artifact}"), 2, ("damaged",)),
    Row("metadata: malformed JSON", lambda w: _rezip(w.artifact, {"edgefirst.json": b"{\"outputs\": [", "labels.txt": b"a"}),
        ("inspect", "{artifact}"), 2, ("edgefirst.json",)),
    Row("metadata: JSON that is a list", lambda w: _rezip(w.artifact, {"edgefirst.json": b"[1, 2]", "labels.txt": b"a"}),
        ("inspect", "{artifact}"), 2, ("expected a JSON object",)),
    Row("metadata: damaged ZIP end record", _damaged_eocd, ("inspect", "{artifact}"), 2, ("damaged",)),
    Row("metadata: ZIP bomb", _zip_bomb, ("inspect", "{artifact}"), 2, ("edgefirst.json", "1073741824")),
    Row("inspect: garbage model bytes, valid metadata", _garbage_model_bytes, ("inspect", "{artifact}"), 2, ("{artifact}",)),
    Row("predict: damaged weights in the artifact", _flipped_weights, ("predict", "{artifact}", "{image}"), 2,
        ("do not match the checksum", "damaged")),
    Row("predict: missing image", _nothing, ("predict", "{artifact}", "{root}/missing.jpg"), 2, ("missing.jpg",)),
    Row("predict: -o x.txt", _nothing, ("predict", "{artifact}", "{image}", "-o", "{out}/x.txt"), 2, (".txt",)),
    Row("predict: read-only -o", _read_only, ("predict", "{artifact}", "{image}", "-o", "{out}/x.png"), 2,
        ("not writable",)),
    Row("validate: one image file missing", _missing_val_image,
        ("validate", "{artifact}", "--data", "{val}/instances.json", "-q"), 0, ("missing",)),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inputs(w: World) -> dict[Path, str]:
    files = [w.model, w.artifact, *w.calib.iterdir(), *w.val.rglob("*")]
    return {p: _sha(p) for p in files if p.is_file()}


@pytest.mark.parametrize("row", MATRIX, ids=[r.name for r in MATRIX])
def test_bad_input(row: Row, world: World, caplog):
    out = world.out
    row.damage(world)
    before = _inputs(world)
    outputs_before = set(out.rglob("*"))
    subst = {k: str(v) for k, v in vars(world).items()}
    args = [a.format(**subst) for a in row.args]
    try:
        r = runner.invoke(app, args)
    finally:
        out.chmod(0o755)
    text = r.output + caplog.text
    assert r.exit_code == row.exit_code, text
    assert "Traceback" not in r.output and not isinstance(r.exception, (AssertionError, TypeError, KeyError))
    if row.exit_code == 2:
        assert "error:" in r.output and "fix:" in r.output, r.output
    for needle in row.needles:
        assert needle.format(**subst) in text, (needle, text)
    assert set(out.rglob("*")) == outputs_before, "nothing may be written"
    assert not (world.out / "m.tflite").exists() and not (world.out / "x.png").exists()
    assert not [p for p in world.root.rglob(".*") if p.is_file()], "no temporary file left behind"
    assert _inputs(world) == before, "inputs are never modified"


def test_a_converted_artifact_gets_a_normal_file_mode(world):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = world.out / "ok.tflite"
        r = runner.invoke(app, ["convert", str(world.model), "--calib", str(shared_path("coco-calib")), "-o", str(out),
                                "--calib-count", "16", "-q", "--on-collapse", "warn"])
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        os.umask(old)
