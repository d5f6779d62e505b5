"""Per-operator profiles of one model: where the inference time goes, by op type and by node.

Two backends, each measured by the runtime's own profiler (no sub-graph timing, no guessing):

* **ONNX** (:func:`profile_onnx`): onnxruntime's built-in profiler (``SessionOptions.enable_profiling``)
  writes a Chrome-trace JSON; :func:`parse_ort_trace` keeps the ``*_kernel_time`` node events of the
  measured runs (warm-up runs are dropped by their ``model_run`` windows) and aggregates them.
* **TFLite** (:func:`profile_tflite`): the ``ai_edge_litert`` Python ``Interpreter`` exposes no
  profiler, but the wheel's ``libLiteRt.so`` exports LiteRT's C API, including a profiler
  (``LiteRtCompiledModelGetProfiler``, ``LiteRtGetProfilerEvents``). :class:`_LiteRt` drives it through
  ``ctypes``: a ``CompiledModel`` on the CPU accelerator with ``enable_profiling = true`` in its
  runtime options, the same XNNPACK CPU kernels the ``Interpreter`` applies by default. Ops that
  XNNPACK runs are reported as XNNPACK *operators* (after its own fusions: e.g. CONV_2D + LOGISTIC +
  MUL become a convolution plus one unary op, which the XNNPACK in ai-edge-litert 2.3 names
  "Invalid Unary Op"); ops it does not take (e.g. a uint8 -> int8 QUANTIZE) appear as TFLite builtin ops with their node
  index. ``kernels="builtin"`` profiles the plain TFLite builtin kernels instead (one event per
  TFLite node, named by op and output tensor), which is slower but maps 1:1 onto the graph.

All times are milliseconds per inference (the mean over the measured runs).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from edgeq.errors import EdgeqError

Kernels = Literal["xnnpack", "builtin"]


# ----------------------------------------------------------------------------- results


@dataclass
class OpStat:
    """Time spent in one op type or one node, per inference.

    Attributes:
        name: op type (``Conv``, ``CONV_2D``, ``Convolution (NHWC, QC8) IGEMM``) or node name.
        op_type: the op type (equal to ``name`` for by-type rows).
        ms: mean milliseconds per inference.
        calls: events per inference (nodes of this type, or 1 for a node).
        share: fraction of the summed op time.
    """

    name: str
    op_type: str
    ms: float
    calls: float
    share: float = 0.0


@dataclass
class Profile:
    """A per-op profile of one model.

    Attributes:
        model: the model file.
        backend: ``onnxruntime``, ``litert-xnnpack`` or ``litert-builtin``.
        threads: intra-op threads (None: the runtime's default).
        runs: measured inferences (after ``warmup``).
        warmup: inferences run before measuring.
        op_ms: summed op time per inference.
        run_ms: per-inference time of the runtime's own top-level event (``model_run`` /
            LiteRT ``Invoke``), i.e. ops plus the runtime's overhead between them.
        by_type: op types, slowest first.
        by_node: nodes, slowest first.
        notes: what the numbers mean and any caveats.
    """

    model: str
    backend: str
    threads: int | None
    runs: int
    warmup: int
    op_ms: float
    run_ms: float | None
    by_type: list[OpStat]
    by_node: list[OpStat]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def top(self, k: int, by: Literal["type", "node"] = "type") -> list[OpStat]:
        return (self.by_type if by == "type" else self.by_node)[:k]


@dataclass(frozen=True)
class _Event:
    """One op execution: which run, its position in the run, node key, op type and duration."""

    run: int
    node: str
    op_type: str
    us: float


def _aggregate(events: Sequence[_Event], runs: int) -> tuple[list[OpStat], list[OpStat], float]:
    """(by type, by node, op ms per run) from op events of ``runs`` measured runs."""
    if runs <= 0:
        raise EdgeqError("a profile needs at least one measured run")
    by_type: dict[str, list[float]] = {}
    by_node: dict[str, tuple[str, list[float]]] = {}
    for e in events:
        t = by_type.setdefault(e.op_type, [0.0, 0.0])
        t[0] += e.us
        t[1] += 1
        n = by_node.setdefault(e.node, (e.op_type, [0.0, 0.0]))[1]
        n[0] += e.us
        n[1] += 1
    total_us = sum(v[0] for v in by_type.values())
    share = (lambda us: us / total_us) if total_us > 0 else (lambda us: 0.0)
    types = [OpStat(k, k, v[0] / runs / 1e3, v[1] / runs, share(v[0])) for k, v in by_type.items()]
    nodes = [OpStat(k, t, v[0] / runs / 1e3, v[1] / runs, share(v[0])) for k, (t, v) in by_node.items()]
    types.sort(key=lambda s: -s.ms)
    nodes.sort(key=lambda s: -s.ms)
    return types, nodes, total_us / runs / 1e3


# ----------------------------------------------------------------------------- ONNX


def parse_ort_trace(trace: str | Path | Sequence[dict[str, Any]], skip_runs: int = 0) -> tuple[list[OpStat], list[OpStat], float, float | None, int]:
    """Aggregate an onnxruntime profiler trace.

    Args:
        trace: the JSON file ``InferenceSession.end_profiling()`` wrote, or its parsed events.
        skip_runs: leading ``model_run`` windows to drop (warm-up).

    Returns:
        (by type, by node, op ms per run, ``model_run`` ms per run or None, measured runs).
        Without ``model_run`` events (older traces) every node event counts as one run's worth.
    """
    events = json.loads(Path(trace).read_text()) if isinstance(trace, (str, Path)) else list(trace)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    windows = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in runs[skip_runs:]]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    ops: list[_Event] = []
    for e in nodes:
        ts = float(e["ts"])
        run = next((i for i, (a, b) in enumerate(windows) if a <= ts <= b), None) if windows else 0
        if run is None:
            continue
        name = str(e["name"])[: -len("_kernel_time")]
        op_type = str(e.get("args", {}).get("op_name", "?"))
        ops.append(_Event(run, name, op_type, float(e["dur"])))
    n_runs = len(windows) if windows else 1
    if not ops:
        raise EdgeqError("the onnxruntime trace has no node events in the measured runs")
    types, by_node, op_ms = _aggregate(ops, n_runs)
    run_ms = sum(b - a for a, b in windows) / len(windows) / 1e3 if windows else None
    return types, by_node, op_ms, run_ms, n_runs


def profile_onnx(
    path: str | Path,
    tensor: np.ndarray | None = None,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    keep_trace: str | Path | None = None,
) -> Profile:
    """Per-op profile of an ONNX model in onnxruntime (CPU), from its built-in profiler.

    Args:
        path: the ONNX model.
        tensor: the input tensor (default: the model's preprocessed synthetic image).
        runs: measured inferences.
        warmup: inferences before measuring (profiled too, then dropped).
        threads: intra-op threads (None: onnxruntime's default).
        keep_trace: copy the raw Chrome-trace JSON here (open it in chrome://tracing or Perfetto).
    """
    import onnxruntime as ort

    path = Path(path)
    if tensor is None:
        tensor = _default_tensor(path, threads)
    with tempfile.TemporaryDirectory(prefix="edgeq-ortprof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: tensor}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        trace = Path(sess.end_profiling())
        if keep_trace:
            Path(keep_trace).parent.mkdir(parents=True, exist_ok=True)
            Path(keep_trace).write_bytes(trace.read_bytes())
        by_type, by_node, op_ms, run_ms, n = parse_ort_trace(trace, skip_runs=warmup)
    return Profile(
        model=str(path),
        backend="onnxruntime",
        threads=threads,
        runs=n,
        warmup=warmup,
        op_ms=op_ms,
        run_ms=run_ms,
        by_type=by_type,
        by_node=by_node,
        notes=[
            (
                f"onnxruntime {ort.__version__} CPUExecutionProvider profiler; node names are the optimized graph's"
                " (fused nodes such as QuickGelu = SiLU appear under their fused name)"
            ),
        ],
    )


# ----------------------------------------------------------------------------- TFLite (LiteRT C API)

_STATUS = {
    1: "invalid argument", 2: "memory allocation failure", 3: "runtime failure", 4: "missing input tensor",
    5: "unsupported", 6: "not found", 7: "timeout", 8: "wrong version", 9: "unknown",
}
_HW_CPU = 1
_LOCK_READ, _LOCK_WRITE = 0, 1
# LiteRtProfilerEventType
_EV_DEFAULT, _EV_OPERATOR, _EV_DELEGATE_OP, _EV_DELEGATE_PROFILED_OP = 1, 2, 4, 8
_OP_EVENTS = (_EV_OPERATOR, _EV_DELEGATE_OP, _EV_DELEGATE_PROFILED_OP)
_TENSOR_TYPE_BYTES = 512  # LiteRtRankedTensorType is ~72 bytes; it is only passed back to LiteRT


class _MemoryUsage(ctypes.Structure):
    _fields_ = [("total", ctypes.c_size_t), ("in_use", ctypes.c_size_t), ("private", ctypes.c_size_t)]


class _ProfiledEvent(ctypes.Structure):
    """``ProfiledEventData`` of litert/c/litert_profiler_event.h."""

    _fields_ = [
        ("tag", ctypes.c_char_p),
        ("event_type", ctypes.c_int),
        ("start_us", ctypes.c_uint64),
        ("elapsed_us", ctypes.c_uint64),
        ("begin_mem", _MemoryUsage),
        ("end_mem", _MemoryUsage),
        ("metadata1", ctypes.c_uint64),
        ("metadata2", ctypes.c_uint64),
        ("source", ctypes.c_int),
    ]


class RawEvent(NamedTuple):
    """A LiteRT profiler event, copied out of the profiler."""

    tag: str
    event_type: int
    start_us: int
    elapsed_us: int
    metadata1: int


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (LiteRT's INFO logging) while LiteRT objects are created; text in the list."""
    out: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to capture
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _libltrt() -> ctypes.CDLL:
    try:
        import ai_edge_litert
    except ImportError:
        raise EdgeqError("ai-edge-litert is not installed", "pip install ai-edge-litert") from None
    lib_path = Path(ai_edge_litert.__file__).with_name("libLiteRt.so")
    if not lib_path.is_file():
        raise EdgeqError(f"{lib_path} is missing, so LiteRT's C profiler cannot be reached")
    lib = ctypes.CDLL(str(lib_path))
    if not hasattr(lib, "LiteRtCompiledModelGetProfiler"):
        raise EdgeqError(f"{lib_path} exports no LiteRT profiler (LiteRtCompiledModelGetProfiler)")
    return lib


class _LiteRt:
    """A LiteRT ``CompiledModel`` (CPU) with its profiler enabled, driven through the C API.

    Owns the environment, model, options, compiled model and tensor buffers and frees them in
    :meth:`close`. Signature 0 is the one run (edgeq and Ultralytics artifacts have one).
    """

    def __init__(self, path: Path, threads: int | None, kernels: Kernels) -> None:
        self.lib = lib = _libltrt()
        vp = ctypes.c_void_p
        lib.LiteRtCreateOpaqueOptions.argtypes = [ctypes.c_char_p, vp, vp, ctypes.POINTER(vp)]
        lib.LiteRtGetProfileSummary.argtypes = [vp, vp, ctypes.POINTER(ctypes.c_char_p)]
        lib.LiteRtLockTensorBuffer.argtypes = [vp, ctypes.POINTER(vp), ctypes.c_int]
        # LiteRtParamIndex is size_t: declare it so indices are passed as 64-bit values.
        size, pvp = ctypes.c_size_t, ctypes.POINTER(vp)
        lib.LiteRtGetModelSignature.argtypes = [vp, size, pvp]
        lib.LiteRtGetSignatureInputTensorByIndex.argtypes = [vp, size, pvp]
        lib.LiteRtGetSignatureOutputTensorByIndex.argtypes = [vp, size, pvp]
        lib.LiteRtGetCompiledModelInputBufferRequirements.argtypes = [vp, size, size, pvp]
        lib.LiteRtGetCompiledModelOutputBufferRequirements.argtypes = [vp, size, size, pvp]
        lib.LiteRtRunCompiledModel.argtypes = [vp, size, size, pvp, size, pvp]
        for fn in ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyOptions", "LiteRtDestroyModel", "LiteRtDestroyEnvironment"):
            getattr(lib, fn).argtypes = [vp]
            getattr(lib, fn).restype = None
        self._libc = ctypes.CDLL(None)
        self._libc.strdup.restype = vp
        self._libc.strdup.argtypes = [ctypes.c_char_p]
        self.env, self.model, self.options, self.compiled = vp(), vp(), vp(), vp()
        self.inputs: list[ctypes.c_void_p] = []
        self.outputs: list[ctypes.c_void_p] = []
        self.log: list[str] = []
        try:
            with _captured_stderr() as log:
                self._open(path, threads, kernels)
        except EdgeqError as e:
            self.close()
            detail = "".join(log).strip().splitlines()[-3:]
            raise EdgeqError(f"{e.what}; LiteRT said: {' | '.join(detail) or 'nothing'}", e.fix) from None
        self.log = log

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise EdgeqError(f"LiteRT {what} failed ({_STATUS.get(status, status)})")

    def _add_toml(self, identifier: bytes, toml: str) -> None:
        """Attach a TOML payload (LiteRT's serialized runtime/CPU options) to the options."""
        opaque = ctypes.c_void_p()
        payload = self._libc.strdup(toml.encode())
        free = ctypes.cast(self._libc.free, ctypes.c_void_p)
        self._check(self.lib.LiteRtCreateOpaqueOptions(identifier, payload, free, ctypes.byref(opaque)), "CreateOpaqueOptions")
        self._check(self.lib.LiteRtAddOpaqueOptions(self.options, opaque), "AddOpaqueOptions")

    def _open(self, path: Path, threads: int | None, kernels: Kernels) -> None:
        lib, b = self.lib, ctypes.byref
        self._check(lib.LiteRtCreateEnvironment(0, None, b(self.env)), "CreateEnvironment")
        self._check(lib.LiteRtCreateModelFromFile(self.env, str(path).encode(), b(self.model)), f"loading {path}")
        self._check(lib.LiteRtCreateOptions(b(self.options)), "CreateOptions")
        self._check(lib.LiteRtSetOptionsHardwareAccelerators(self.options, _HW_CPU), "SetOptionsHardwareAccelerators")
        self._add_toml(b"runtime_options_string", "enable_profiling = true\n")
        cpu = f"num_threads = {int(threads or 1)}\n"
        if kernels == "builtin":
            cpu += 'kernel_mode = "builtin"\n'
        self._add_toml(b"xnnpack", cpu)
        self._check(lib.LiteRtCreateCompiledModel(self.env, self.model, self.options, b(self.compiled)), "CreateCompiledModel")
        sig = ctypes.c_void_p()
        self._check(lib.LiteRtGetModelSignature(self.model, 0, b(sig)), "GetModelSignature")
        n_in, n_out = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(lib.LiteRtGetNumSignatureInputs(sig, b(n_in)), "GetNumSignatureInputs")
        self._check(lib.LiteRtGetNumSignatureOutputs(sig, b(n_out)), "GetNumSignatureOutputs")
        self.inputs = [self._buffer(sig, i, True) for i in range(n_in.value)]
        self.outputs = [self._buffer(sig, i, False) for i in range(n_out.value)]
        self.profiler = ctypes.c_void_p()
        self._check(lib.LiteRtCompiledModelGetProfiler(self.compiled, b(self.profiler)), "CompiledModelGetProfiler")
        if not self.profiler:
            raise EdgeqError("LiteRT created no profiler although enable_profiling was set")

    def _buffer(self, sig: ctypes.c_void_p, index: int, is_input: bool) -> ctypes.c_void_p:
        lib, b = self.lib, ctypes.byref
        tensor, req, buf = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        ttype = ctypes.create_string_buffer(_TENSOR_TYPE_BYTES)
        get_tensor = lib.LiteRtGetSignatureInputTensorByIndex if is_input else lib.LiteRtGetSignatureOutputTensorByIndex
        get_req = lib.LiteRtGetCompiledModelInputBufferRequirements if is_input else lib.LiteRtGetCompiledModelOutputBufferRequirements
        self._check(get_tensor(sig, index, b(tensor)), "GetSignatureTensor")
        self._check(lib.LiteRtGetRankedTensorType(tensor, ttype), "GetRankedTensorType")
        self._check(get_req(self.compiled, 0, index, b(req)), "GetBufferRequirements")
        self._check(lib.LiteRtCreateManagedTensorBufferFromRequirements(self.env, ttype, req, b(buf)), "CreateTensorBuffer")
        return buf

    def write_input(self, index: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array)
        size = ctypes.c_size_t()
        self._check(self.lib.LiteRtGetTensorBufferSize(self.inputs[index], ctypes.byref(size)), "GetTensorBufferSize")
        if data.nbytes > size.value:
            raise EdgeqError(f"input {index} takes {size.value} bytes, got an array of {data.nbytes}")
        addr = ctypes.c_void_p()
        self._check(self.lib.LiteRtLockTensorBuffer(self.inputs[index], ctypes.byref(addr), _LOCK_WRITE), "LockTensorBuffer")
        try:
            ctypes.memmove(addr, data.ctypes.data, data.nbytes)
        finally:
            self.lib.LiteRtUnlockTensorBuffer(self.inputs[index])

    def run(self) -> None:
        arr_in = (ctypes.c_void_p * len(self.inputs))(*(b.value for b in self.inputs))
        arr_out = (ctypes.c_void_p * len(self.outputs))(*(b.value for b in self.outputs))
        self._check(self.lib.LiteRtRunCompiledModel(self.compiled, 0, len(self.inputs), arr_in, len(self.outputs), arr_out), "RunCompiledModel")

    def start(self) -> None:
        self._check(self.lib.LiteRtResetProfiler(self.profiler), "ResetProfiler")
        self._check(self.lib.LiteRtStartProfiler(self.profiler), "StartProfiler")

    def stop(self) -> list[RawEvent]:
        self._check(self.lib.LiteRtStopProfiler(self.profiler), "StopProfiler")
        n = ctypes.c_int()
        self._check(self.lib.LiteRtGetNumProfilerEvents(self.profiler, ctypes.byref(n)), "GetNumProfilerEvents")
        if n.value == 0:
            return []
        events = (_ProfiledEvent * n.value)()
        self._check(self.lib.LiteRtGetProfilerEvents(self.profiler, n.value, events), "GetProfilerEvents")
        # Tags are owned by the profiler: copy everything out before it is destroyed.
        return [
            RawEvent((e.tag or b"?").decode(errors="replace"), int(e.event_type), int(e.start_us), int(e.elapsed_us), int(e.metadata1))
            for e in events
        ]

    def summary(self) -> str:
        """LiteRT's own text summary (the ``benchmark_model`` op-profiling tables)."""
        text = ctypes.c_char_p()
        self._check(self.lib.LiteRtGetProfileSummary(self.profiler, self.compiled, ctypes.byref(text)), "GetProfileSummary")
        value = text.value.decode(errors="replace") if text.value else ""
        self._libc.free(ctypes.cast(text, ctypes.c_void_p))
        return value

    def close(self) -> None:
        lib = self.lib
        for buf in self.inputs + self.outputs:
            lib.LiteRtDestroyTensorBuffer(buf)
        self.inputs, self.outputs = [], []
        for fn, handle in (("LiteRtDestroyCompiledModel", "compiled"), ("LiteRtDestroyOptions", "options"), ("LiteRtDestroyModel", "model"), ("LiteRtDestroyEnvironment", "env")):
            h = getattr(self, handle, None)
            if h:
                getattr(lib, fn)(h)
                setattr(self, handle, ctypes.c_void_p())


def _tflite_node_names(path: Path) -> dict[int, tuple[str, str]]:
    """TFLite node index -> (op name, first output tensor name), read with the Python Interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    with _captured_stderr():
        interp = Interpreter(model_path=str(path))
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    out: dict[int, tuple[str, str]] = {}
    for op in interp._get_ops_details():
        outs = [int(i) for i in op["outputs"]]
        out[int(op["index"])] = (str(op["op_name"]), names.get(outs[0], "?") if outs else "?")
    return out


def split_litert_events(events: Sequence[RawEvent], node_names: dict[int, tuple[str, str]] | None = None) -> tuple[list[_Event], list[float]]:
    """Op events per run from LiteRT profiler events, plus each run's ``Invoke`` time (us).

    The profiler's buffer is in begin order and each run opens with the interpreter's ``Invoke``
    event, so a run is everything from one ``Invoke`` to the next (XNNPACK's per-operator events
    carry no absolute start time, so windows by timestamp would not work). Nodes are keyed by
    their position in the run, which the fixed execution plan keeps stable from run to run, and
    labelled with the event's tag (the TFLite op, or ``xnnpack/<operator>``) and, for builtin TFLite
    ops, the node's output tensor.
    """
    names = node_names or {}
    out: list[_Event] = []
    invokes: list[float] = []
    pos = 0
    for e in events:
        if e.event_type == _EV_DEFAULT and e.tag == "Invoke":
            invokes.append(float(e.elapsed_us))
            pos = 0
            continue
        if e.event_type not in _OP_EVENTS or not invokes:
            continue
        run = len(invokes) - 1
        if e.event_type == _EV_OPERATOR:
            op_type, tensor = names.get(e.metadata1, (e.tag, "?"))
            label = f"#{pos:03d} {tensor} [node {e.metadata1}]"
        else:
            op_type = f"xnnpack/{e.tag}"
            label = f"#{pos:03d} xnnpack operator {e.metadata1}"
        out.append(_Event(run, label, op_type, float(e.elapsed_us)))
        pos += 1
    return out, invokes


def profile_tflite(
    path: str | Path,
    tensor: np.ndarray | None = None,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    kernels: Kernels = "xnnpack",
) -> Profile:
    """Per-op profile of a TFLite artifact on LiteRT's CPU kernels, from LiteRT's own profiler.

    Args:
        path: the ``.tflite`` file.
        tensor: the input tensor (default: the artifact's preprocessed synthetic image).
        runs: measured inferences.
        warmup: inferences before measuring (not profiled).
        threads: CPU threads (default 1, LiteRT's CompiledModel default).
        kernels: ``xnnpack`` (the default CPU path, what ``Interpreter`` runs) or ``builtin``
            (TFLite's builtin kernels without XNNPACK; one event per graph node).
    """
    path = Path(path)
    if kernels not in ("xnnpack", "builtin"):
        raise EdgeqError(f"kernels must be xnnpack or builtin, not {kernels!r}")
    if tensor is None:
        tensor = _default_tensor(path, threads)
    rt = _LiteRt(path, threads, kernels)
    try:
        rt.write_input(0, tensor)
        for _ in range(warmup):
            rt.run()
        rt.start()
        for _ in range(runs):
            rt.run()
        raw = rt.stop()
    finally:
        rt.close()
    events, invokes = split_litert_events(raw, _tflite_node_names(path))
    n_runs = len(invokes) or runs
    if not events:
        raise EdgeqError(f"LiteRT's profiler recorded no op events for {path}")
    by_type, by_node, op_ms = _aggregate(events, n_runs)
    notes = [
        "LiteRT C API CompiledModel (CPU) with enable_profiling; "
        + ("XNNPACK operators (after XNNPACK's fusions) plus TFLite builtin ops XNNPACK did not take" if kernels == "xnnpack" else "TFLite builtin kernels, XNNPACK disabled"),
    ]
    if any(s.op_type == "xnnpack/Invalid Unary Op" for s in by_type):
        notes.append(
            "'Invalid Unary Op' is XNNPACK's name for a unary operator missing from its name table; in YOLO"
            " graphs it is the fused SiLU (one per LOGISTIC + MUL pair, and no MUL operators remain)"
        )
    return Profile(
        model=str(path),
        backend=f"litert-{kernels}",
        threads=threads,
        runs=n_runs,
        warmup=warmup,
        op_ms=op_ms,
        run_ms=(sum(invokes) / len(invokes) / 1e3) if invokes else None,
        by_type=by_type,
        by_node=by_node,
        notes=notes,
    )


# ----------------------------------------------------------------------------- dispatch


def _default_tensor(path: Path, threads: int | None) -> np.ndarray:
    """The model's own preprocessing of the synthetic benchmark image."""
    from edgeq.perf.latency import synthetic_image
    from edgeq.runtime import load

    with _captured_stderr():
        model = load(path, threads=threads)
    return model.preprocess(synthetic_image())[0]


def profile_model(
    path: str | Path,
    tensor: np.ndarray | None = None,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    kernels: Kernels = "xnnpack",
) -> Profile:
    """Per-op profile of a ``.tflite`` (LiteRT) or ``.onnx`` (onnxruntime) model."""
    path = Path(path)
    if not path.is_file():
        raise EdgeqError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return profile_onnx(path, tensor, runs=runs, warmup=warmup, threads=threads)
    if suffix == ".tflite":
        return profile_tflite(path, tensor, runs=runs, warmup=warmup, threads=threads, kernels=kernels)
    raise EdgeqError(f"{path}: cannot profile a {suffix!r} file", "give a .tflite or .onnx model")


def print_profile(profile: Profile, top: int = 15, console: Any = None) -> None:
    """Rich tables of the top ops by type and by node."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    run = f", {profile.run_ms:.2f} ms per run incl. runtime overhead" if profile.run_ms is not None else ""
    console.print(
        f"[bold]per-op profile[/] {Path(profile.model).name} ({profile.backend}, threads {profile.threads or 'default'},"
        f" {profile.runs} runs): ops {profile.op_ms:.2f} ms{run}"
    )
    for title, rows, by in (("op type", profile.top(top, "type"), "type"), ("node", profile.top(top, "node"), "node")):
        t = Table(title=f"top {len(rows)} by {title}", title_justify="left")
        t.add_column(title, overflow="fold")
        if by == "node":
            t.add_column("op type")
        t.add_column("ms/run", justify="right")
        t.add_column("%", justify="right")
        t.add_column("calls/run", justify="right")
        for s in rows:
            cells = [s.name] + ([s.op_type] if by == "node" else []) + [f"{s.ms:.3f}", f"{100 * s.share:.1f}", f"{s.calls:g}"]
            t.add_row(*cells)
        console.print(t)
    for note in profile.notes:
        console.print(f"  [dim]{note}[/]")


__all__ = [
    "OpStat",
    "Profile",
    "RawEvent",
    "parse_ort_trace",
    "print_profile",
    "profile_model",
    "profile_onnx",
    "profile_tflite",
    "split_litert_events",
]
