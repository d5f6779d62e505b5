"""The bench scripts: argument handling and the helpers that decide what their tables say."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _common as C
import decode


@pytest.mark.parametrize("script", ["decode.py", "inference.py", "memory.py", "convert.py"])
def test_missing_shared_is_a_clear_error(script: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(BENCH / script), "--shared", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "shared data not found" in r.stderr and "--shared" in r.stderr


def test_match_counts_ties_and_pixels() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    cls = np.array([1, 1, 2])
    scores = np.array([0.9, 0.5, 0.5], np.float32)
    b = np.array([[0.5, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    bcls = np.array([1, 2])
    # candidates: class 2 has a second candidate with the same score -> box 3 is a tie
    cand_cls, cand_scores = np.array([1, 1, 2, 2]), np.array([0.9, 0.5, 0.5, 0.5], np.float32)
    matched, tied, worst = decode.match(a, cls, scores, b, bcls, np.array([0.9, 0.1], np.float32), cand_cls, cand_scores)
    assert (matched, tied, worst) == (1, 1, 0.5)
    # class tie: HAL has box 2 at the same place with the same score, but as class 3
    b2 = np.array([[0.5, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    matched, tied, _ = decode.match(a[:2], cls[:2], scores[:2], b2, np.array([1, 3]), np.array([0.9, 0.5], np.float32), cand_cls[:2], cand_scores[:2])
    assert (matched, tied) == (1, 1)


def test_summary_and_child_rusage(tmp_path: Path) -> None:
    s = C.Summary.of([1.0, 2.0, 3.0])
    assert (s.n, s.median, s.mean) == (3, 2.0, 2.0)
    r = C.run_child([sys.executable, "-c", "import numpy as np; a = np.ones(64 * 2**20 // 8); print(a.sum())"], log=tmp_path / "log")
    assert r.returncode == 0 and "8388608" in r.output
    assert r.peak_rss_mib > 60  # the child touched 64 MiB
    assert "load average" in C.machine_note()
