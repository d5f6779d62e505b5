"""The Python API behind the CLI: each command is one function here over the stage modules."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime.types import Detections


def predict_image(
    model: str | Path,
    image: str | Path,
    *,
    conf: float = 0.25,
    iou: float | None = None,
    threads: int | None = None,
    draw: bool = False,
) -> tuple[Detections, np.ndarray | None]:
    """Load a model, run it on one image; optionally return the image with detections drawn.

    ``iou`` None: the IoU the model's file declares (its family's default otherwise).
    """
    from edgeq.calib.preprocess import read_image
    from edgeq.runtime import load

    m = load(model, threads=threads)
    bgr = read_image(image)
    dets = m.predict(bgr, conf=conf, iou=iou)
    if not draw:
        return dets, None
    from edgeq.runtime.draw import draw as draw_dets

    return dets, draw_dets(bgr, dets)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image, choosing the format from the suffix."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise EdgeqError(f"cannot encode an image as {path.suffix!r}", "use .png or .jpg")
    path.write_bytes(buf.tobytes())


def validate_models(
    model: str | Path,
    data: str | Path,
    images: str | Path,
    *,
    compare: str | Path | None = None,
    save_json: str | Path | None = None,
    report: str | Path | None = None,
    conf: float = 0.001,
    iou: float | None = None,
    max_det: int = 300,
    max_images: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    ci: bool = False,
):
    """Validate one model (and optionally a second on the same images); print and report.

    Returns the ValidationResult of ``model``, or a Comparison (compare model -> model) when
    ``compare`` is given; ``ci`` adds the delta's 95 % paired-bootstrap interval over the images.
    """
    from edgeq import eval as ev
    from edgeq.runtime import load

    kwargs = dict(conf=conf, iou=iou, max_det=max_det, max_images=max_images, progress=progress,
                  keep_matches=ci and compare is not None)
    result = ev.validate(load(model, threads=threads), data, images, save_json=save_json, **kwargs)
    if compare is None:
        ev.print_result(result, top_classes=5)
        if report:
            ev.write_report(result, report)
        return result
    other = ev.validate(load(compare, threads=threads), data, images, **kwargs)
    cmp = ev.compare(other, result, ci=ci)
    ev.print_comparison(cmp)
    if report:
        ev.write_report(cmp, report)
    return cmp
