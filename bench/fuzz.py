"""Fuzz edgeq's readers of untrusted files: only EdgeqError may come out, quickly and in bounded memory.

For each reader, ``--cases`` inputs (default 10,000) made from real seeds by random mutation
(random bytes, bit flips, truncations, splices, chunk duplication, ZIP/flatbuffer header fields set
to boundary values; for JSON also one value replaced by a random JSON value or removed), fed to:

* ``zip``       ``edgeq.meta.embed.read_appended_bytes``: the appended-ZIP reader (seeds: edgeq's
                 stored ZIP, a deflated one, a ZIP64 one, each holding a real edgefirst.json)
* ``artifact``  ``edgeq.meta.read.read_meta`` on a written file: ZIP + JSON + schema together
* ``edgefirst`` ``edgeq.meta.read.parse_edgefirst``: edgefirst.json bytes -> ModelMeta (seeds:
                 the EdgeFirst peers' JSON and a synthesized one)
* ``tflite``    ``edgeq.meta.verify.verify_tflite_bytes``: flatbuffer checks + LiteRT, in process
                 (``isolate=False``: a LiteRT crash shows here; ``edgeq inspect`` isolates it)
                 (seeds: a 1.9 KB two-Conv model from the writer, and a peer's 3.4 MB model)
* ``onnx``      ``edgeq.graph.load.load_model`` (seeds: small Conv graphs with Ultralytics metadata)
* ``coco``      ``edgeq.eval.dataset.load_coco_json`` (seeds: a small instances json, coco-val-dev's)
* ``image``     ``edgeq.calib.preprocess.read_image`` (seeds: small PNG, JPEG, BMP, WebP, GIF, TIFF, PPM)

Each reader runs in its own child process, so peak RSS is that reader's own, and a case that kills
the process (a crash in native code) is counted, saved and skipped: the child restarts after it.
Inputs that raise anything but EdgeqError, or crash, are saved to ``out/fuzz/`` to reproduce.
Exit status 1 when any reader had an unexpected exception or a crash.

    python bench/fuzz.py                      # 10,000 cases per reader
    python bench/fuzz.py --cases 500 --readers zip,tflite
"""
from __future__ import annotations

import io
import json
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

READERS = ("zip", "artifact", "edgefirst", "tflite", "onnx", "coco", "image")
OUT = C.REPO / "out" / "fuzz"
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 4 << 20, 1 << 30]


# ----------------------------------------------------------------------------- mutation


def random_json(r: random.Random, depth: int = 0) -> Any:
    k = r.randrange(10 if depth < 3 else 7)
    if k == 0:
        return None
    if k == 1:
        return r.choice([True, False])
    if k == 2:
        return r.choice([0, -1, 1, 3, 2**31, -(2**63), 10**30, r.randint(-1000, 1000)])
    if k == 3:
        return r.choice([0.0, -0.5, 1e308, 1e-300, r.uniform(-10, 10)])
    if k in (4, 5, 6):
        return r.choice(["", "int8", "sigmoid", "nhwc", "x" * r.randint(0, 20), "\u00e9\u4e2d", "[[{"])
    if k in (7, 8):
        return [random_json(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {r.choice(["shape", "outputs", "scale", "name", "id", "bbox", "k"]): random_json(r, depth + 1) for _ in range(r.randint(0, 3))}


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(r: random.Random, doc: Any, paths: list[tuple]) -> bytes:
    """One to three values of ``doc`` replaced by random JSON (or removed, or the root replaced)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(r.randint(1, 3)):
        path = r.choice(paths)
        if not path:
            return json.dumps(random_json(r)).encode()
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and r.random() < 0.3:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = random_json(r)
        except (KeyError, IndexError, TypeError):  # an earlier mutation changed the structure
            continue
    return json.dumps(doc).encode()


def mutate_bytes(r: random.Random, seed: bytes) -> bytes:
    """``seed`` with one to three byte-level mutations (or random bytes)."""
    if r.random() < 0.05 or not seed:
        return r.randbytes(r.randint(0, 512))
    b = bytearray(seed)
    for _ in range(r.randint(1, 3)):
        if not b:
            break
        op = r.randrange(7)
        if op == 0:  # bit flips
            for _ in range(r.randint(1, 16)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif op == 1:  # truncation
            del b[r.randint(0, len(b)) :]
        elif op == 2:  # splice random bytes over a range
            i = r.randint(0, len(b))
            j = min(len(b), i + r.randint(0, 64))
            b[i:j] = r.randbytes(r.randint(0, 64))
        elif op == 3:  # duplicate or delete a chunk
            i, n = r.randrange(len(b)), r.randint(1, 256)
            if r.random() < 0.5:
                b[i:i] = b[i : i + n]
            else:
                del b[i : i + n]
        else:  # a boundary value into a 1/2/4/8-byte field: near a ZIP signature, the start, or anywhere
            sigs = [i for i in (b.rfind(b"PK", 0, r.randint(2, max(2, len(b)))),) if i >= 0]
            at = r.choice([*sigs, 0, r.randrange(len(b))]) + r.randint(0, 46 if op == 4 else 16)
            width = r.choice([1, 2, 4, 8])
            v = r.choice([*INTERESTING, len(b), len(b) - at, r.getrandbits(32)]) & ((1 << 8 * width) - 1)
            if at < len(b):
                b[at : at + width] = v.to_bytes(width, "little")
    return bytes(b)


# ----------------------------------------------------------------------------- seeds


def _zip_seeds(shared: Path) -> list[bytes]:
    import zipfile

    from edgeq.meta.embed import (
        EDGEFIRST_JSON,
        LABELS_TXT,
        METADATA_JSON,
        append_zip,
        read_appended,
    )

    found = read_appended(shared / "peers" / "edgefirst" / "yolov8n-int8.tflite")
    assert found is not None
    files = {k: found[1][k] for k in (EDGEFIRST_JSON, LABELS_TXT, METADATA_JSON)}
    model = b"\x1c\x00\x00\x00TFL3" + bytes(range(256))
    seeds = [append_zip(model, files)]
    for compression, zip64 in ((zipfile.ZIP_DEFLATED, False), (zipfile.ZIP_DEFLATED, True)):
        buf = io.BytesIO()
        buf.write(model)
        with zipfile.ZipFile(buf, "a", compression=compression) as zf:
            for name, data in files.items():
                with zf.open(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), "w", force_zip64=zip64) as f:
                    f.write(data)
        seeds.append(buf.getvalue())
    return seeds


def _edgefirst_seeds(shared: Path) -> list[Any]:
    from edgeq.meta.embed import EDGEFIRST_JSON, read_appended
    from edgeq.meta.read import read_meta

    docs = []
    for name in ("yolov8n-int8", "yolov8n-seg-smart-int8", "yolov8n-seg-combined-int8"):
        found = read_appended(shared / "peers" / "edgefirst" / f"{name}.tflite", [EDGEFIRST_JSON])
        assert found is not None
        docs.append(json.loads(found[1][EDGEFIRST_JSON]))
    docs.append(read_meta(shared / "models" / "yolov5n.onnx").to_json())
    return docs


def _tiny_onnx(nodes: int = 1) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper

    inits, graph_nodes, x = [], [], "images"
    for i in range(nodes):
        w = np.linspace(-1, 1, 4 * 3 * 9 if i == 0 else 4 * 4 * 9, dtype=np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [4, 3 if i == 0 else 4, 3, 3], w))
        y = "output0" if i == nodes - 1 else f"t{i}"
        graph_nodes.append(helper.make_node("Conv", [x, f"w{i}"], [y], pads=[1, 1, 1, 1]))
        x = y
    graph = helper.make_graph(graph_nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'a', 1: 'b'}", "imgsz": "[16, 16]", "task": "detect", "stride": "8"})
    return model.SerializeToString()


def _tflite_seeds(shared: Path) -> list[bytes]:
    """A one-Conv model from edgeq's writer (via the tests' helpers) and a peer's model bytes."""
    import onnx

    from edgeq.meta.embed import zip_start

    seeds = []
    try:
        sys.path.insert(0, str(C.REPO / "tests"))
        from _writer_helpers import convert

        from edgeq.graph.load import normalize

        seeds.append(bytes(convert(normalize(onnx.load_from_string(_tiny_onnx(2))), n_calib=2)[1].buffer))
    except ImportError:
        print("note: tests/_writer_helpers.py not importable; fuzzing the peer model only", file=sys.stderr)
    peer = (shared / "peers" / "edgefirst" / "yolov8n-int8.tflite").read_bytes()
    seeds.append(peer[: zip_start(peer)])
    return seeds


def _coco_seeds(shared: Path) -> list[Any]:
    small = {
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
    dev = json.loads((shared / "coco-val-dev" / "instances.json").read_text())
    dev = {**dev, "images": dev["images"][:5], "annotations": dev["annotations"][:20]}
    return [small, dev]


def _image_seeds() -> list[bytes]:
    import cv2
    import numpy as np

    img = (np.indices((24, 32)).sum(0) * 5 % 255).astype(np.uint8)
    img = np.dstack([img, img[::-1], img[:, ::-1]])
    out = []
    for ext in (".png", ".jpg", ".bmp", ".webp", ".gif", ".tiff", ".ppm"):
        ok, enc = cv2.imencode(ext, img)
        if ok:
            out.append(enc.tobytes())
    return out


# ----------------------------------------------------------------------------- readers


def make_reader(name: str, shared: Path, work: Path) -> tuple[Callable[[random.Random], bytes], Callable[[bytes], Any], str]:
    """(make one input, read it, file suffix) for a reader."""

    def to_file(suffix: str, fn: Callable[[Path], Any]) -> Callable[[bytes], Any]:
        path = work / f"case{suffix}"

        def run(data: bytes) -> Any:
            path.write_bytes(data)
            return fn(path)

        return run

    if name in ("zip", "artifact"):
        from edgeq.meta.embed import read_appended_bytes
        from edgeq.meta.read import read_meta

        zips = _zip_seeds(shared)
        reader = (lambda d: read_appended_bytes(d, "fuzz.tflite")) if name == "zip" else to_file(".tflite", read_meta)
        return (lambda r: mutate_bytes(r, r.choice(zips))), reader, ".tflite"
    if name == "edgefirst":
        from edgeq.meta.read import parse_edgefirst

        docs = [(d, _paths(d), json.dumps(d).encode()) for d in _edgefirst_seeds(shared)]

        def gen(r: random.Random) -> bytes:
            doc, paths, text = r.choice(docs)
            return mutate_bytes(r, text) if r.random() < 0.3 else mutate_json(r, doc, paths)

        return gen, (lambda d: parse_edgefirst(d, path="fuzz.tflite")), ".json"
    if name == "tflite":
        from edgeq.meta.verify import verify_tflite_bytes

        seeds = _tflite_seeds(shared)
        weights = [4] * (len(seeds) - 1) + [1]
        return (lambda r: mutate_bytes(r, r.choices(seeds, weights)[0])), (lambda d: verify_tflite_bytes(d, "fuzz.tflite", isolate=False)), ".tflite"
    if name == "onnx":
        from edgeq.graph.load import load_model

        seeds = [_tiny_onnx(1), _tiny_onnx(3)]
        return (lambda r: mutate_bytes(r, r.choice(seeds))), to_file(".onnx", load_model), ".onnx"
    if name == "coco":
        from edgeq.eval.dataset import load_coco_json

        docs = [(d, _paths(d), json.dumps(d).encode()) for d in _coco_seeds(shared)]

        def gen_coco(r: random.Random) -> bytes:
            doc, paths, text = r.choice(docs)
            return mutate_bytes(r, text) if r.random() < 0.3 else mutate_json(r, doc, paths)

        return gen_coco, to_file(".json", load_coco_json), ".json"
    if name == "image":
        from edgeq.calib.preprocess import read_image

        images = _image_seeds()
        return (lambda r: mutate_bytes(r, r.choice(images))), to_file(".img", read_image), ".img"
    raise SystemExit(f"error: unknown reader {name!r} (known: {', '.join(READERS)})")


def run_reader(name: str, cases: int, seed: int, shared: Path, start: int, state_path: Path) -> None:
    """Run cases ``start..cases-1`` of one reader in this process, keeping ``state_path`` current.

    The state (counts so far and the case being run) is written before every case, so that when
    a case kills the process (a crash in native code) the parent knows which one, and resumes.
    """
    from edgeq.errors import EdgeqError

    work = OUT / f"work-{name}"
    work.mkdir(parents=True, exist_ok=True)
    gen, read, suffix = make_reader(name, shared, work)
    for k in range(1, 100):  # warm up (lazy imports such as onnxslim's) until one input is accepted
        try:
            read(gen(random.Random(-k)))
            break
        except Exception:  # noqa: BLE001, S112 - warm-up only; the cases below count
            continue
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state = {"reader": name, "cases": cases, "expected": 0, "accepted": 0, "unexpected": [], "crashes": [],
             "longest_ms": 0.0, "longest_case": -1, "wall_s": 0.0, **state}
    t_all = time.perf_counter() - state["wall_s"]
    for i in range(start, cases):
        r = random.Random(seed * 1_000_003 + i)
        data = gen(r)
        state["current"] = i
        state["wall_s"] = time.perf_counter() - t_all
        state_path.write_text(json.dumps(state))
        t0 = time.perf_counter()
        try:
            read(data)
            state["accepted"] += 1
        except EdgeqError:
            state["expected"] += 1
        except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
            saved = OUT / f"{name}-case{i}{suffix}"
            saved.write_bytes(data)
            where = traceback.extract_tb(e.__traceback__)[-1]
            state["unexpected"].append({"case": i, "error": repr(e)[:300], "at": f"{Path(where.filename).name}:{where.lineno}", "input": str(saved)})
        dt = (time.perf_counter() - t0) * 1e3
        if dt > state["longest_ms"]:
            state["longest_ms"], state["longest_case"] = dt, i
    state["current"] = None
    state["wall_s"] = time.perf_counter() - t_all
    state["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_path.write_text(json.dumps(state))


def run_in_children(name: str, args: Any, shared: Path) -> tuple[dict[str, Any], float]:
    """All cases of one reader in child processes, restarted after a crash; (state, peak RSS MiB)."""
    state_path = OUT / f"{name}.json"
    state_path.unlink(missing_ok=True)
    start, peak = 0, 0.0
    while True:
        cmd = [sys.executable, __file__, "--child", name, "--cases", str(args.cases), "--seed", str(args.seed),
               "--shared", str(shared), "--start", str(start), "--state", str(state_path)]
        child = C.run_child(cmd, log=OUT / f"{name}.log")
        peak = max(peak, child.peak_rss_mib)
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
        if state is None:
            raise SystemExit(f"error: the {name} fuzzer did not start:\n{child.output[-3000:]}")
        if child.returncode == 0 and state.get("current") is None:
            return state, peak
        crashed = state["current"]
        gen, _, suffix = make_reader(name, shared, OUT / f"work-{name}")
        saved = OUT / f"{name}-case{crashed}{suffix}"
        saved.write_bytes(gen(random.Random(args.seed * 1_000_003 + crashed)))
        state["crashes"].append({"case": crashed, "error": f"process died (exit {child.returncode})", "at": "native code", "input": str(saved)})
        state["current"] = None
        state_path.write_text(json.dumps(state))
        print(f"  case {crashed} killed the process (exit {child.returncode}); input saved to {saved}; resuming", flush=True)
        start = crashed + 1


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000, help="inputs per reader")
    p.add_argument("--readers", default=",".join(READERS), help=f"comma-separated subset of {', '.join(READERS)}")
    p.add_argument("--seed", type=int, default=0, help="random seed (case i of a reader is reproducible from seed and i)")
    p.add_argument("--child", help=argparse_hidden())
    p.add_argument("--start", type=int, default=0, help=argparse_hidden())
    p.add_argument("--state", type=Path, help=argparse_hidden())
    args = p.parse_args()
    shared = C.check_shared(args.shared, "peers/edgefirst", "models/yolov5n.onnx", "coco-val-dev/instances.json")
    if args.child:
        run_reader(args.child, args.cases, args.seed, shared, args.start, args.state)
        return
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    for r in readers:
        if r not in READERS:
            sys.exit(f"error: unknown reader {r!r} (known: {', '.join(READERS)})")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {C.machine_note()}", flush=True)
    rows, results, failed = [], [], False
    for name in readers:
        print(f"{name}: {args.cases} cases ...", flush=True)
        res, peak = run_in_children(name, args, shared)
        results.append(res)
        bad = len(res["unexpected"]) + len(res["crashes"])
        failed |= bad > 0
        unexpected = f"{len(res['unexpected'])}" + (f" + {len(res['crashes'])} crashes" if res["crashes"] else "")
        rows.append([name, res["cases"], res["expected"], res["accepted"], unexpected,
                     f"{res['longest_ms']:.1f} (#{res['longest_case']})", f"{peak:.0f}", f"{res['wall_s']:.0f}"])
    C.table(f"fuzzing edgeq's readers, {args.cases} cases each (seed {args.seed})",
            ["reader", "cases", "EdgeqError", "accepted", "unexpected", "longest case ms", "peak RSS MiB", "time s"], rows)
    for res in results:
        for u in (res["unexpected"] + res["crashes"])[:5]:
            print(f"  {res['reader']} case {u['case']}: {u['error']} at {u['at']} (input: {u['input']})")
    print(f"machine: {C.machine_note()}")
    sys.exit(1 if failed else 0)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
