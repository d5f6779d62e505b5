"""Letterbox parity, calibration sources and their errors, streaming statistics and range methods."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.calib.dataset import calibration_set
from edgeq.calib.histogram import StreamingHistogram
from edgeq.calib.preprocess import letterbox
from edgeq.calib.ranges import choose_range, expected_error, minmax, mse, percentile
from edgeq.errors import CalibrationError


@pytest.mark.parametrize(
    "h,w,expect",  # Ultralytics LetterBox(center=True) arithmetic, worked by hand
    [
        (1080, 810, dict(gain=640 / 1080, left=80, top=0, unpad=(480, 640))),
        (640, 427, dict(gain=1.0, left=106, top=0, unpad=(427, 640))),  # odd pad: 106 left, 107 right
        (375, 500, dict(gain=1.28, left=0, top=80, unpad=(640, 480))),
    ],
)
def test_letterbox_matches_ultralytics(h, w, expect):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 10  # B
    img[..., 2] = 200  # R
    out, lb = letterbox(img, (640, 640))
    assert out.shape == (640, 640, 3)
    assert lb.gain == pytest.approx(expect["gain"])
    assert (lb.pad_x, lb.pad_y) == (expect["left"], expect["top"])
    uw, uh = expect["unpad"]
    inner = out[expect["top"]: expect["top"] + uh, expect["left"]: expect["left"] + uw]
    assert (inner[..., 0] == 200).all() and (inner[..., 2] == 10).all(), "output must be RGB"
    if expect["left"] or expect["top"]:
        assert (out[0, 0] == 114).all(), "padding must be 114"
    box = np.array([[expect["left"], expect["top"], expect["left"] + uw, expect["top"] + uh]], np.float32)
    np.testing.assert_allclose(lb.to_original(box), [[0, 0, w, h]], atol=1.0)


def test_calibration_sources(tmp_path, calib_dir):
    folder = calibration_set(calib_dir)
    assert len(folder) == 200 and folder.paths == tuple(sorted(folder.paths))
    coco = calibration_set(calib_dir / "instances.json", images_dir=calib_dir / "images", count=60)
    assert len(coco) == 60
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images found"):
        calibration_set(tmp_path / "empty")
    with pytest.raises(CalibrationError, match="not found"):
        calibration_set(tmp_path / "nope")


def test_few_images_warn_and_bad_image_fails(tmp_path, caplog, calib_dir):
    src = sorted((calib_dir / "images").iterdir())[:2]
    for p in src:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cs = calibration_set(tmp_path)
    from edgeq.calib.checks import check_calibration_set

    assert "only 3 calibration images" in check_calibration_set(cs, 640)[0].what
    with pytest.raises(CalibrationError, match="broken.jpg"):
        list(cs.images((640, 640)))


def test_histogram_memory_is_fixed_and_counts_survive_widening():
    rng = np.random.default_rng(0)
    h = StreamingHistogram(bins=512)
    for i in range(50):
        h.update(rng.normal(0, 1 + i / 10, size=10_000).astype(np.float32))
    assert h.counts.shape == (512,) and h.counts.sum() == h.total == 500_000
    assert h.lo <= h.min and h.hi >= h.max


def test_range_methods():
    rng = np.random.default_rng(0)
    h = StreamingHistogram()
    x = np.concatenate([rng.normal(0, 1, 200_000), [60.0]]).astype(np.float32)  # one outlier
    h.update(x)
    lo, hi = minmax(h)
    assert hi == pytest.approx(60.0)
    p_lo, p_hi = percentile(h)
    assert p_hi < 10 and p_lo > -10
    m = mse(h)
    assert expected_error(h, *m) < expected_error(h, lo, hi)
    (r, method) = choose_range(h, "auto")
    assert method in ("mse", "percentile") and expected_error(h, *r) <= expected_error(h, *m) + 1e-12


RNG_SAMPLING = np.random.default_rng(7)


def test_histogram_samples_large_updates_but_keeps_exact_extremes():
    x = RNG_SAMPLING.normal(size=100_000).astype(np.float32)
    x[12_345] = 40.0  # an extreme the strided sample skips
    h = StreamingHistogram(bins=256, max_samples=10_000)
    h.update(x)
    assert h.max == 40.0 and h.hi >= 40.0, "min/max must stay exact under sampling"
    assert h.total == h.counts.sum() == 10_000
    full = StreamingHistogram(bins=256, max_samples=1 << 30)
    full.update(x)
    assert full.total == 100_000
    # the sampled distribution matches the full one: same 1/99 percentiles within a bin or two
    width = (h.hi - h.lo) / 256
    for q in (0.01, 0.99):
        a = h.centres()[np.searchsorted(np.cumsum(h.counts) / h.total, q)]
        b = full.centres()[np.searchsorted(np.cumsum(full.counts) / full.total, q)]
        assert abs(a - b) <= 2 * width
