"""Readers of untrusted files: bounded (ZIP bombs, huge files, deep JSON) and fuzzed.

Every reader must turn bad input into an ``EdgeqError`` naming the file (and the member or field),
never another exception, and must stay fast and small whatever the input declares. The fuzz tests
here are a short run (a few hundred cases per reader); ``python bench/fuzz.py`` is the long one.
"""
from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgeq.calib.preprocess import MAX_IMAGE_PIXELS, read_image
from edgeq.errors import ArtifactError, CalibrationError, EdgeqError, ModelError
from edgeq.eval.dataset import load_coco_json
from edgeq.eval.errors import DatasetError
from edgeq.graph.load import load_model
from edgeq.meta.embed import (
    EDGEFIRST_JSON,
    LABELS_TXT,
    MAX_LABELS,
    MAX_MEMBERS,
    append_zip,
    member_cap,
    read_appended_bytes,
)
from edgeq.meta.read import parse_edgefirst, read_meta
from edgeq.meta.verify import json_depth, verify_tflite, verify_tflite_bytes

MiB = 1 << 20
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------------------- building inputs


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zeros_stream(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros (~1 KB per MiB), built without the zeros.

    One MiB compressed and ended with a full flush (byte-aligned, history reset) is a
    self-contained run of blocks; repeating it and adding an empty final block is a valid stream.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\0" * MiB) + c.flush(zlib.Z_FULL_FLUSH)
    return block * mib + b"\x03\x00"


@dataclass
class Entry:
    """One ZIP member as written, with every header field overridable."""

    name: str
    plain: bytes = b""
    method: int = 0  # 0 stored, 8 deflate
    payload: bytes | None = None  # the bytes in the file (default: plain, deflated when method 8)
    crc: int | None = None
    size: int | None = None
    local: dict[str, Any] = field(default_factory=dict)  # local-header overrides: name, crc, csize, size, method

    def stored(self) -> bytes:
        if self.payload is not None:
            return self.payload
        return deflate(self.plain) if self.method == 8 else self.plain


def build_zip(entries: list[Entry], prefix: bytes = b"model bytes " * 8, *, cd_offset: int | None = None,
              cd_size: int | None = None, count: int | None = None) -> bytes:
    """``prefix`` + a ZIP whose offsets count from the start of the file (as append_zip writes them)."""
    out = bytearray(prefix)
    central = bytearray()
    for e in entries:
        payload = e.stored()
        crc = zlib.crc32(e.plain) if e.crc is None else e.crc
        size = len(e.plain) if e.size is None else e.size
        csize = len(payload)
        big = size >= 0xFFFFFFFF or csize >= 0xFFFFFFFF
        extra = struct.pack("<2H2Q", 1, 16, size, csize) if big else b""
        s32, c32 = (0xFFFFFFFF, 0xFFFFFFFF) if big else (size, csize)
        lo = e.local
        lname = lo.get("name", e.name).encode()
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 45 if big else 20, 0, lo.get("method", e.method), 0, 0x21,
                           lo.get("crc", crc), lo.get("csize", c32), lo.get("size", s32), len(lname), len(extra))
        out += lname + extra + payload
        name = e.name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45 if big else 20, 45 if big else 20, 0, e.method, 0, 0x21,
                               crc, c32, s32, len(name), len(extra), 0, 0, 0, 0o644 << 16, offset)
        central += name + extra
    start = len(out)
    out += central
    n = len(entries) if count is None else count
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central) if cd_size is None else cd_size,
                       start if cd_offset is None else cd_offset, 0)
    return bytes(out)


def small_meta() -> dict[str, Any]:
    """A valid edgefirst.json with split boxes/scores, quantized children."""
    def child(kind: str, i: int, ch: int) -> dict[str, Any]:
        hw = 8 >> i
        return {"name": f"{kind}_{i}", "type": kind, "stride": 8 << i, "scale_index": i, "shape": [1, hw, hw, ch],
                "dshape": [{"batch": 1}, {"height": hw}, {"width": hw}, {"num_features": ch}], "dtype": "int8",
                "quantization": {"scale": 0.1 * (i + 1), "zero_point": -3, "dtype": "int8"}}
    return {
        "schema_version": 2, "decoder_version": "yolov8", "nms": "class_agnostic",
        "dataset": {"classes": ["a", "b"]}, "input": {"shape": [1, 64, 64, 3], "cameraadaptor": "rgb"},
        "model": {"task": "detection", "detection": True, "segmentation": False},
        "validation": {"iou": 0.7}, "edgeq": {"input_dtype": "uint8"},
        "outputs": [
            {"name": "boxes", "type": "boxes", "encoding": "dfl", "normalized": True, "shape": [1, 4, 84],
             "outputs": [child("boxes", i, 64) for i in range(3)]},
            {"name": "scores", "type": "scores", "score_format": "per_class", "shape": [1, 2, 84],
             "outputs": [child("scores", i, 2) for i in range(3)]},
        ],
    }


def artifact_bytes(method: int = 8, meta: dict[str, Any] | None = None) -> bytes:
    doc = json.dumps(meta or small_meta()).encode()
    return build_zip([Entry(EDGEFIRST_JSON, doc, method), Entry(LABELS_TXT, b"a\nb\n", method)])


def tiny_onnx() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.linspace(-1, 1, 108, dtype=np.float32))
    node = helper.make_node("Conv", ["images", "w"], ["output0"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'a', 1: 'b'}", "imgsz": "[16, 16]", "task": "detect", "stride": "8"})
    return model


def small_coco() -> dict[str, Any]:
    return {
        "info": {"description": "t"},
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12.5], "area": 125.0, "iscrowd": 0,
             "segmentation": [[1, 2, 11, 2, 11, 14.5]]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "segmentation": {"counts": [0, 25, 3047], "size": [48, 64]}},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


@pytest.fixture(scope="module")
def tiny_tflite() -> bytes:
    """A real one-Conv TFLite model from the writer (1.2 KB)."""
    from _writer_helpers import convert

    from edgeq.graph.load import normalize

    _, result, _ = convert(normalize(tiny_onnx()), n_calib=2)
    return bytes(result.buffer)


# ----------------------------------------------------------------------------- mutations

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, 4 * MiB + 1]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """Random bytes, or ``seed`` with bit flips, truncation, splices or header fields overwritten."""
    kind = draw(st.sampled_from(["random", "flip", "truncate", "splice", "field", "field", "flip"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    b = bytearray(seed)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        b = b[: draw(st.integers(0, len(b)))]
    elif kind == "splice":
        i = draw(st.integers(0, len(b)))
        j = draw(st.integers(i, min(len(b), i + 64)))
        b[i:j] = draw(st.binary(max_size=64))
    else:  # overwrite a 1/2/4-byte little-endian field near a ZIP signature (or anywhere)
        sigs = [i for i in range(len(b) - 1) if b[i : i + 2] == b"PK"] or [0]
        at = min(draw(st.sampled_from(sigs)) + draw(st.integers(0, 46)), len(b) - 1)
        width = draw(st.sampled_from([1, 2, 4]))
        value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**32 - 1)) & ((1 << 8 * width) - 1)
        b[at : at + width] = value.to_bytes(width, "little")
    return bytes(b)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, doc: dict[str, Any]) -> bytes:
    """``doc`` with one value replaced (any JSON type) or removed, or its text mutated as bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated(json.dumps(doc).encode()))
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return json.dumps(draw(JSON_VALUES)).encode()
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return json.dumps(doc).encode()


def only_edgeq_errors(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except EdgeqError:
        pass


# ----------------------------------------------------------------------------- the appended ZIP


def test_builder_makes_what_zipfile_reads(tmp_path: Path) -> None:
    import zipfile

    blob = artifact_bytes()
    (tmp_path / "m.tflite").write_bytes(blob)
    assert zipfile.ZipFile(tmp_path / "m.tflite").read(LABELS_TXT) == b"a\nb\n"
    meta = read_meta(tmp_path / "m.tflite")
    assert meta.labels == ["a", "b"] and [c.stride for c in meta.output("boxes").children] == [8, 16, 32]
    assert zlib.decompress(zeros_stream(3), -15) == b"\0" * 3 * MiB
    # append_zip (stored) round-trips through the bounded reader too
    z, files = read_appended_bytes(append_zip(b"x" * 100, {EDGEFIRST_JSON: b"{}", LABELS_TXT: b"q\n"}))
    assert z.start == 100 and files == {EDGEFIRST_JSON: b"{}", LABELS_TXT: b"q\n"}


def _timed_read(path: Path) -> tuple[ArtifactError, float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ArtifactError) as e:
            read_meta(path)
    finally:
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return e.value, dt, peak


def test_zip_bomb_declaring_4gib_is_refused_fast(tmp_path: Path) -> None:
    """The issue's case: a 7.5 MB artifact whose edgefirst.json is 4 GiB of zeros (ZIP64 sizes)."""
    bomb = Entry(EDGEFIRST_JSON, payload=zeros_stream(4096), method=8, crc=0, size=4 << 30)
    path = tmp_path / "bomb.tflite"
    path.write_bytes(build_zip([bomb, Entry(LABELS_TXT, b"a\n")], prefix=b"\0" * 3_400_000))
    err, dt, peak = _timed_read(path)
    assert "bomb.tflite" in err.what and "'edgefirst.json'" in err.what and "declares 4294967296 bytes" in err.what
    assert err.fix
    assert dt < 2.0 and peak < 300 * MiB, (dt, peak)


def test_zip_bomb_lying_about_its_size_stops_at_the_declared_size(tmp_path: Path) -> None:
    """Declares the cap (4 MiB) but inflates to 3 GiB: decompression stops after 4 MiB + 1 byte."""
    cap = member_cap(EDGEFIRST_JSON)
    bomb = Entry(EDGEFIRST_JSON, payload=zeros_stream(3072), method=8, crc=0, size=cap)
    path = tmp_path / "liar.tflite"
    path.write_bytes(build_zip([bomb]))
    err, dt, peak = _timed_read(path)
    assert "liar.tflite" in err.what and "damaged" in err.what
    assert f"decompresses to more than the {cap} bytes it declares" in err.what
    assert dt < 2.0 and peak < 300 * MiB, (dt, peak)


@pytest.mark.parametrize("entries,kw,needle", [
    ([Entry(EDGEFIRST_JSON, b"x" * (2 * MiB), 8)], {}, "compression ratio of"),
    ([Entry(f"f{i}.txt", b"x") for i in range(MAX_MEMBERS + 1)], {}, f"{MAX_MEMBERS + 1} members"),
    ([Entry(EDGEFIRST_JSON, b"{}", 8, payload=b"\x07\x00\x00")], {}, "corrupt compressed data"),
    ([Entry(EDGEFIRST_JSON, b"{}", 8, crc=0x1234)], {}, "fails its CRC check"),
    ([Entry(EDGEFIRST_JSON, b"{}", 8, payload=deflate(b"{}")[:-1])], {}, "truncated"),
    ([Entry(EDGEFIRST_JSON, b"{}", 0, local={"name": "edgefirst.jsox"})], {}, "local header names"),
    ([Entry(EDGEFIRST_JSON, b"{}", 0, local={"crc": 7})], {}, "disagree"),
    ([Entry(EDGEFIRST_JSON, b"{}", 0, local={"method": 8})], {}, "disagree on method"),
    ([Entry(EDGEFIRST_JSON, b"{}", 12)], {}, "compression method 12"),
    ([Entry(EDGEFIRST_JSON, b"{}"), Entry(EDGEFIRST_JSON, b"{}")], {}, "twice"),
    ([Entry(EDGEFIRST_JSON, b"{}")], {"cd_offset": 10**9}, "past where it ends"),
    ([Entry(EDGEFIRST_JSON, b"{}")], {"cd_size": 10**6}, "central directory is 1000000 bytes"),
    ([Entry(EDGEFIRST_JSON, b"{}")], {"cd_size": 5000}, "more than precedes it"),
    ([Entry(EDGEFIRST_JSON, b"{}")], {"cd_size": 20}, "is not a ZIP directory record"),
    ([Entry(EDGEFIRST_JSON, b"{}")], {"count": 2}, "is not a ZIP directory record"),
])
def test_damaged_or_hostile_zip(tmp_path: Path, entries: list[Entry], kw: dict, needle: str) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(build_zip(entries, **kw))
    with pytest.raises(ArtifactError, match=needle) as e:
        read_meta(path)
    assert "bad.tflite" in e.value.what and "no appended ZIP" not in e.value.what and e.value.fix


def test_truncated_zip_is_damaged_not_missing(tmp_path: Path) -> None:
    blob = artifact_bytes()
    for cut, needle in ((5, "cut short"), (30, "truncated"), (len(blob) // 3, "truncated")):
        (tmp_path / "t.tflite").write_bytes(blob[: len(blob) - cut])
        with pytest.raises(ArtifactError, match=needle) as e:
            read_meta(tmp_path / "t.tflite")
        assert "damaged" in e.value.what
    (tmp_path / "none.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ArtifactError, match="has no appended ZIP"):
        read_meta(tmp_path / "none.tflite")


def test_member_size_cap_and_labels(tmp_path: Path) -> None:
    cap = member_cap(LABELS_TXT)
    big = Entry(LABELS_TXT, b"a\n" * (cap // 2 + 1))
    (tmp_path / "l.tflite").write_bytes(build_zip([Entry(EDGEFIRST_JSON, json.dumps(small_meta()).encode()), big]))
    with pytest.raises(ArtifactError, match=rf"'labels.txt' declares {cap + 2} bytes uncompressed, more than the {cap}"):
        read_meta(tmp_path / "l.tflite")
    many = Entry(LABELS_TXT, b"".join(b"%x\n" % i for i in range(MAX_LABELS + 1)), 8)
    (tmp_path / "n.tflite").write_bytes(build_zip([Entry(EDGEFIRST_JSON, json.dumps(small_meta()).encode()), many]))
    with pytest.raises(ArtifactError, match=f"labels.txt lists {MAX_LABELS + 1} labels"):
        read_meta(tmp_path / "n.tflite")
    with pytest.raises(ArtifactError, match="readers accept at most"):
        append_zip(b"m", {LABELS_TXT: b"x" * (cap + 1)})


# ----------------------------------------------------------------------------- edgefirst.json


@pytest.mark.parametrize("text,needle", [
    (b'{"outputs": [', "is not valid JSON"),
    (b"[1, 2]", "is a list of 2, expected a JSON object"),
    (b"\xff\xfe{}", "is not UTF-8"),
    (b"[" * 100 + b"]" * 100, "nests more than 64 levels"),
    (b'{"outputs": {"a": 1}}', "field outputs is an object, expected a list"),
    (b'{"outputs": [7]}', r"field outputs\[0\] is the number 7, expected an object"),
    (b'{"outputs": [{"shape": "1x4"}]}', r"field outputs\[0\]\.shape is the string '1x4'"),
    (b'{"outputs": [{"shape": [1, 2.5]}]}', r"outputs\[0\]\.shape is a list of 2, expected a list of integers"),
    (b'{"outputs": [{"outputs": [{"quantization": {"scale": "x"}}]}]}', r"outputs\[0\]\.outputs\[0\]\.quantization\.scale"),
    (b'{"outputs": [{"quantization": {"zero_point": 1}}]}', r"quantization has no 'scale'"),
    (b'{"outputs": [{"dshape": [{}]}]}', r"outputs\[0\]\.dshape\[0\] is an object"),
    (b'{"outputs": [{"stride": true}]}', r"outputs\[0\]\.stride is the boolean true"),
    (b'{"outputs": [{}], "input": {"shape": [640, 640]}}', r"field input\.shape is a list of 2, expected a list of 4"),
    (b'{"outputs": [{}], "dataset": {"classes": [1, 2]}}', r"field dataset\.classes"),
    (b'{"outputs": [{}], "model": []}', r"field model is a list"),
    (b'{"outputs": [{}], "edgeq": "x"}', r"field edgeq is the string"),
    (b'{"outputs": [{}], "schema_version": true}', "schema_version True is not supported"),
    (b'{"outputs": [{}], "x": 1' + b"0" * 5000 + b"}", "is not valid JSON"),
])
def test_malformed_edgefirst_json(text: bytes, needle: str) -> None:
    with pytest.raises(ArtifactError, match=needle) as e:
        parse_edgefirst(text, path="m.tflite")
    assert e.value.what.startswith("m.tflite") and "edgefirst.json" in e.value.what


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "[[[[\\"]]", "b": [[1]]}') == 3
    assert json_depth(b"7") == 0 and json_depth(b"[" * 70, 64) > 64


@FUZZ
@given(st.data())
def test_fuzz_edgefirst_json(data: st.DataObject) -> None:
    text = data.draw(mutated_json(small_meta()))
    only_edgeq_errors(lambda: parse_edgefirst(text, path="m.tflite"))


@FUZZ
@given(st.data())
def test_fuzz_zip_reader(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([artifact_bytes(8), artifact_bytes(0)]))
    blob = data.draw(mutated(seed))
    only_edgeq_errors(lambda: read_appended_bytes(blob, "m.tflite"))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_fuzz_read_meta(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(data.draw(mutated(artifact_bytes(data.draw(st.sampled_from([0, 8]))))))
    only_edgeq_errors(lambda: read_meta(path))


# ----------------------------------------------------------------------------- TFLite


def _without_subgraphs(model: bytes) -> bytes:
    """The model with its root table's ``subgraphs`` field (vtable entry 2) removed."""
    b = bytearray(model)
    (root,) = struct.unpack_from("<I", b, 0)
    vtable = root - struct.unpack_from("<i", b, root)[0]
    b[vtable + 8 : vtable + 10] = b"\0\0"
    return bytes(b)


def test_tflite_verifier(tiny_tflite: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verify_tflite_bytes(tiny_tflite, isolate=False)
    verify_tflite(shared_path("peers", "edgefirst", "yolov8n-int8.tflite"))  # model bytes + appended ZIP, isolated
    for bad, needle in [
        (_without_subgraphs(tiny_tflite), "has no subgraphs"),  # LiteRT 2.3.0 segfaults on this one
        (b"", "too short"),
        (b"\x1c\0\0\0TFL2" + tiny_tflite[8:], "no TFLite file identifier"),
        (struct.pack("<I", 10**6) + tiny_tflite[4:], "root table offset 1000000 is outside"),
        (tiny_tflite[:200], "outside|runs past|LiteRT rejects"),
        (tiny_tflite[:8] + bytes(len(tiny_tflite) - 8), "vtable|runs past|LiteRT rejects"),
    ]:
        with pytest.raises(ArtifactError, match=needle):
            verify_tflite_bytes(bad, "x.tflite", isolate=False)
    # isolated, a LiteRT crash is an ArtifactError, not the end of this process
    from edgeq.meta import verify

    monkeypatch.setattr(verify, "_check_subgraphs", lambda buf, label: None)
    with pytest.raises(ArtifactError, match=r"x.tflite: LiteRT rejects the TFLite model \((LiteRT crashed \(SIGSEGV\)|.*subgraph)"):
        verify_tflite_bytes(_without_subgraphs(tiny_tflite), "x.tflite")


def test_read_meta_checks_the_model_before_litert_reads_it(tmp_path: Path) -> None:
    """An Ultralytics TFLite (metadata.json only) is described from LiteRT's tensors, in process."""
    path = tmp_path / "u.tflite"
    path.write_bytes(_without_subgraphs(shared_path("peers", "ultralytics", "yolov8n_full_integer_quant.tflite").read_bytes()))
    with pytest.raises(ArtifactError, match="u.tflite: the TFLite model has no subgraphs"):
        read_meta(path)  # LiteRT 2.3.0 would have crashed the process here


def test_inspect_refuses_garbage_model_with_valid_metadata(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeq.cli import app

    meta = read_meta(shared_path("peers", "edgefirst", "yolov8n-int8.tflite"))
    from edgeq.meta.embed import metadata_files

    files = metadata_files(meta.to_json(), meta.labels)
    path = tmp_path / "garbage.tflite"
    path.write_bytes(append_zip(b"\x1c\0\0\0TFL3" + bytes(range(256)) * 40, files))
    read_meta(path)  # the metadata alone is fine
    r = CliRunner().invoke(app, ["inspect", str(path)])
    assert r.exit_code == 2 and "error:" in r.output and "garbage.tflite" in r.output, r.output
    assert "Traceback" not in r.output


@FUZZ
@given(st.data())
def test_fuzz_tflite_verifier(tiny_tflite: bytes, data: st.DataObject) -> None:
    blob = data.draw(mutated(tiny_tflite))
    only_edgeq_errors(lambda: verify_tflite_bytes(blob, "m.tflite", isolate=False))


# ----------------------------------------------------------------------------- ONNX


def test_onnx_loader_gaps(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        load_model(p)
    with open(p, "wb") as f:  # sparse: nothing is written
        f.truncate(3 << 30)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="larger than an ONNX protobuf can be"):
        load_model(p)
    assert time.perf_counter() - t0 < 1
    p.write_bytes(helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString()[:2])
    with pytest.raises(ModelError, match="no graph|not a valid ONNX"):
        load_model(p)
    m = tiny_onnx()
    del m.graph.input[:]
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="has 0 inputs"):
        load_model(p)
    for key, value in (("imgsz", "[16, 'x']"), ("imgsz", "(("), ("stride", "'8'"), ("names", "3")):
        m = tiny_onnx()
        helper.set_model_props(m, {**{q.key: q.value for q in m.metadata_props}, key: value})
        p.write_bytes(m.SerializeToString())
        with pytest.raises(ModelError, match=f"metadata '{key}'"):
            load_model(p)
    p.write_bytes(tiny_onnx().SerializeToString())
    assert load_model(p).info.imgsz == (16, 16)


@settings(FUZZ, max_examples=80)
@given(st.data())
def test_fuzz_onnx_loader(tmp_path: Path, data: st.DataObject) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(data.draw(mutated(tiny_onnx().SerializeToString())))
    only_edgeq_errors(lambda: load_model(p))


# ----------------------------------------------------------------------------- COCO json, images


@pytest.mark.parametrize("doc,needle", [
    ([1, 2], "top level is a list"),
    ({"images": {}, "categories": [{"id": 1}]}, "field images is an object, expected a list"),
    ({"images": [3], "categories": [{"id": 1}]}, r"images\[0\] is an integer, expected an object"),
    ({"images": [{"id": "1", "file_name": "a"}], "categories": [{"id": 1}]}, r"field images\[0\]\.id is a string"),
    ({"images": [{"id": 1}], "categories": [{"id": 1}]}, r"images\[0\] has no 'file_name'"),
    ({"images": [], "categories": [{"id": 1}], "annotations": {}}, "field annotations is an object"),
    ({"images": [], "categories": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2]}]},
     r"annotations\[0\]\.bbox is a list, expected a list of four numbers"),
    ({"images": [], "categories": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]},
     r"annotations\[0\] has no 'id'"),
    ({"images": [], "categories": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                                "segmentation": [[1, "2"]]}]}, r"annotations\[0\]\.segmentation"),
    ({"images": [], "categories": [{"id": True}]}, r"categories\[0\]\.id is true"),
    ({"images": [], "categories": "abc"}, "field categories is a string"),
])
def test_malformed_coco(tmp_path: Path, doc: Any, needle: str) -> None:
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=needle) as e:
        load_coco_json(p)
    assert "instances.json" in e.value.what


def test_coco_size_and_depth(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text('{"images": [], "categories": [{"id": 1}], "info": ' + "[" * 40 + "]" * 40 + "}")
    with pytest.raises(DatasetError, match="nests more than 32 levels"):
        load_coco_json(p)
    p.write_text('{"images": [], "categories": [{"id": 1}], "info": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(DatasetError, match="nests more than"):
        load_coco_json(p)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(600 << 20)
    with pytest.raises(DatasetError, match="more than the 512 MiB"):
        load_coco_json(big)
    p.write_text(json.dumps(small_coco()))
    assert len(load_coco_json(p)["annotations"]) == 2


@settings(FUZZ, max_examples=100)
@given(st.data())
def test_fuzz_coco_reader(tmp_path: Path, data: st.DataObject) -> None:
    p = tmp_path / "instances.json"
    p.write_bytes(data.draw(mutated_json(small_coco())))
    only_edgeq_errors(lambda: load_coco_json(p))


def test_read_image_caps(tmp_path: Path) -> None:
    # a PNG header claiming 20000 x 20000 pixels is refused before anything is decoded
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4s2I5B", 13, b"IHDR", 20000, 20000, 8, 2, 0, 0, 0) + b"\0" * 64
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(CalibrationError, match=r"20000 x 20000 pixels, more than the 100 MP") as e:
        read_image(tmp_path / "huge.png")
    assert "huge.png" in e.value.what
    assert 20000 * 20000 > MAX_IMAGE_PIXELS
    with open(tmp_path / "big.jpg", "wb") as f:
        f.truncate(300 << 20)
    with pytest.raises(CalibrationError, match="more than the 256 MiB"):
        read_image(tmp_path / "big.jpg")
    # normal images: exactly what OpenCV's IMREAD_COLOR gives (gray, 16-bit, RGBA converted)
    rng = np.random.default_rng(0)
    for name, img in (("g.png", rng.integers(0, 255, (9, 7), np.uint8)), ("d.png", rng.integers(0, 65535, (9, 7, 3), np.uint16)),
                      ("a.png", rng.integers(0, 255, (9, 7, 4), np.uint8)), ("c.jpg", rng.integers(0, 255, (9, 7, 3), np.uint8))):
        cv2.imwrite(str(tmp_path / name), img)
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR))
