"""Structural checks of untrusted input before it is parsed: TFLite flatbuffers and JSON nesting.

* :func:`verify_tflite` / :func:`verify_tflite_bytes`: the flatbuffer part of a ``.tflite`` (the
  bytes before an appended ZIP) has the ``TFL3`` file identifier, a root table whose offset, vtable
  and table lie inside the buffer, at least one subgraph, and LiteRT can build an interpreter from
  it (``Interpreter(model_content=...)`` runs TFLite's flatbuffer verifier and resolves every
  operator); its ``ValueError`` / ``RuntimeError`` become :class:`ArtifactError`.

  LiteRT is native code and not every malformed model that passes its verifier is handled:
  fuzzing found that a model whose ``subgraphs`` vector is absent or empty kills the process
  (SIGSEGV in ``Interpreter.__init__``, ai-edge-litert 2.3.0). That case is checked here first;
  and by default (``isolate=True``) the LiteRT build runs in a child Python process (~0.2 s), so
  any other crash is reported as an :class:`ArtifactError` instead of taking the caller down.
* :func:`json_depth`: how deeply a JSON document nests, found without parsing it (``json.loads``
  recurses once per level), so readers can refuse absurd nesting before they parse.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeq.errors import ArtifactError, EdgeqError
from edgeq.meta.embed import zip_start

#: A flatbuffer (and so a TFLite model without external buffers) is at most 2 GiB.
MAX_TFLITE_BYTES = 2 << 30
#: Longest an isolated LiteRT build may take (yolov8n: ~0.2 s including the interpreter start).
LITERT_TIMEOUT_S = 120
_TFLITE_FIX = "the model bytes are not a TFLite model (corrupted, truncated, or another format); convert the model again"
_CHILD = (
    "import sys\n"
    "from ai_edge_litert.interpreter import Interpreter\n"
    "try:\n"
    "    Interpreter(model_content=sys.stdin.buffer.read())\n"
    "except (ValueError, RuntimeError) as e:\n"
    "    sys.stdout.write(str(e))\n"
    "    sys.exit(3)\n"
)


def verify_tflite(path: str | Path, *, isolate: bool = True) -> None:
    """Check that ``path`` holds a TFLite flatbuffer LiteRT accepts (an appended ZIP is ignored).

    Args:
        isolate: build the LiteRT interpreter in a child process, so that a LiteRT crash on a
            malformed model is an ArtifactError rather than the end of this process.

    Raises:
        ArtifactError: unreadable, larger than a flatbuffer can be, no ``TFL3`` identifier, root
            table out of bounds, no subgraph, or LiteRT's verifier / interpreter builder rejects
            (or crashes on) it.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_TFLITE_BYTES + (1 << 30):
            raise ArtifactError(f"{path} is {size / 2**30:.1f} GiB, larger than a TFLite flatbuffer can be (2 GiB)", _TFLITE_FIX)
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    verify_tflite_bytes(data, str(path), isolate=isolate)


def check_tflite_structure(data: bytes, label: str = "<bytes>") -> bytes:
    """The cheap in-process checks of :func:`verify_tflite_bytes` (no LiteRT); returns the model bytes.

    Run it before handing untrusted bytes to LiteRT in this process: it refuses what is known to
    crash LiteRT rather than raise.
    """
    end = zip_start(data)
    model = data if end is None else data[:end]
    _check_root(model, label)
    _check_subgraphs(model, label)
    return model


def verify_tflite_bytes(data: bytes, label: str = "<bytes>", *, isolate: bool = True) -> None:
    """:func:`verify_tflite` on a file's bytes (``label`` names them in messages)."""
    model = check_tflite_structure(data, label)
    reason = _litert_isolated(model, label) if isolate else _litert_here(model)
    if reason is not None:
        raise ArtifactError(f"{label}: LiteRT rejects the TFLite model ({reason})", _TFLITE_FIX)


def _reason(text: str, fallback: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else fallback


def _litert_here(model: bytes) -> str | None:
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=model)
    except (ValueError, RuntimeError) as e:
        return _reason(str(e), type(e).__name__)
    return None


def _litert_isolated(model: bytes, label: str) -> str | None:
    try:
        r = subprocess.run(
            [sys.executable, "-c", _CHILD], input=model, capture_output=True, timeout=LITERT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return f"building the interpreter took more than {LITERT_TIMEOUT_S} s"
    except OSError as e:
        raise EdgeqError(f"cannot start a Python process to verify {label} with LiteRT: {e}") from None
    if r.returncode == 0:
        return None
    if r.returncode == 3:
        return _reason(r.stdout.decode("utf-8", "replace"), "rejected")
    if r.returncode < 0:
        name = signal.Signals(-r.returncode).name if -r.returncode in signal.Signals._value2member_map_ else str(-r.returncode)
        return f"LiteRT crashed ({name}) building the interpreter: the flatbuffer is malformed"
    raise EdgeqError(
        f"LiteRT could not be run to verify {label} (exit {r.returncode}): {_reason(r.stderr.decode('utf-8', 'replace'), '')}",
        "check that ai-edge-litert is installed in this Python",
    )


def _check_root(buf: bytes, label: str) -> None:
    """File identifier and root table (offset, vtable, table) inside the buffer."""
    n = len(buf)
    if n > MAX_TFLITE_BYTES:
        raise ArtifactError(f"{label}: the model part is {n} bytes, larger than a flatbuffer can be (2 GiB)", _TFLITE_FIX)
    if n < 16:
        raise ArtifactError(f"{label}: {n} bytes of model data is too short for a TFLite flatbuffer", _TFLITE_FIX)
    if buf[4:8] != b"TFL3":
        raise ArtifactError(f"{label}: no TFLite file identifier (bytes 4-8 are {bytes(buf[4:8])!r}, not b'TFL3')", _TFLITE_FIX)
    (root,) = struct.unpack_from("<I", buf, 0)
    if root < 8 or root % 4 or root + 4 > n:
        raise ArtifactError(f"{label}: the flatbuffer root table offset {root} is outside the {n}-byte model", _TFLITE_FIX)
    (soff,) = struct.unpack_from("<i", buf, root)
    vtable = root - soff
    if vtable < 0 or vtable % 2 or vtable + 4 > n:
        raise ArtifactError(f"{label}: the root table's vtable offset {vtable} is outside the model", _TFLITE_FIX)
    vsize, tsize = struct.unpack_from("<2H", buf, vtable)
    if vsize < 4 or vsize % 2 or vtable + vsize > n or tsize < 4 or root + tsize > n:
        raise ArtifactError(f"{label}: the root table (vtable {vsize} bytes, table {tsize} bytes) runs past the model", _TFLITE_FIX)


def _check_subgraphs(buf: bytes, label: str) -> None:
    """At least one subgraph (LiteRT 2.3.0 segfaults on a model without): Model field 2, a vector."""
    (root,) = struct.unpack_from("<I", buf, 0)
    vtable = root - struct.unpack_from("<i", buf, root)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]
    field = 4 + 2 * 2  # vtable entry of field 2 (subgraphs)
    at = struct.unpack_from("<H", buf, vtable + field)[0] if field + 2 <= vsize else 0
    count = 0
    if at and root + at + 4 <= len(buf):
        vec = root + at + struct.unpack_from("<I", buf, root + at)[0]
        count = struct.unpack_from("<I", buf, vec)[0] if vec + 4 <= len(buf) else -1
    if count == -1 or (at and root + at + 4 > len(buf)):
        raise ArtifactError(f"{label}: the TFLite model's subgraph list lies outside the model", _TFLITE_FIX)
    if count == 0:
        raise ArtifactError(f"{label}: the TFLite model has no subgraphs", _TFLITE_FIX)


# ----------------------------------------------------------------------------- JSON nesting

_CHUNK = 1 << 20


def json_depth(data: bytes | str, limit: int | None = None) -> int:
    """Deepest nesting of ``[]`` / ``{}`` outside strings in a JSON text (0 for a scalar).

    Exact for valid JSON; for invalid JSON it is some number, and the parse that follows reports
    the error. Vectorized over 1 MiB chunks, stopping once ``limit`` is exceeded.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = deepest = 0
    in_string = False
    backslashes = 0  # run of backslashes ending the previous chunk
    for start in range(0, len(raw), _CHUNK):
        a = np.frombuffer(raw, np.uint8, count=min(_CHUNK, len(raw) - start), offset=start)
        is_bs = a == 0x5C
        quote = a == 0x22
        last_other = None
        if backslashes or is_bs.any():  # a quote after an odd run of backslashes is escaped
            pos = np.arange(a.size, dtype=np.int32)
            # last position before i that is not a backslash (-1 - carried run at the chunk start)
            last_other = np.maximum.accumulate(np.where(is_bs, np.int32(-1 - backslashes), pos))
            before = np.empty_like(last_other)
            before[0] = -1 - backslashes
            before[1:] = last_other[:-1]
            quote &= (pos - 1 - before) % 2 == 0
        parity = (np.cumsum(quote, dtype=np.int32) + in_string) % 2  # odd: inside a string
        outside = parity == 0
        opens = ((a == 0x5B) | (a == 0x7B)) & outside
        closes = ((a == 0x5D) | (a == 0x7D)) & outside
        level = depth + np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
        if level.size:
            deepest = max(deepest, int(level.max()))
            depth = int(level[-1])
            in_string = bool(parity[-1])
            backslashes = int(a.size - 1 - last_other[-1]) if last_other is not None and is_bs[-1] else 0
        if limit is not None and deepest > limit:
            break
    return deepest
