"""The Python API behind the CLI: each command is one function here over the stage modules."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.fileio import check_writable_output, write_atomic
from edgeq.runtime.types import Detections


def predict_image(
    model: str | Path,
    image: str | Path,
    *,
    conf: float = 0.25,
    iou: float | None = None,
    threads: int | None = None,
    draw: bool = False,
    output: str | Path | None = None,
) -> tuple[Detections, np.ndarray | None]:
    """Load a model, run it on one image; optionally return the image with detections drawn.

    ``iou`` None: the IoU the model's file declares (its family's default otherwise).
    ``output``: also write the drawn image there (checked before the model runs: an image
    suffix OpenCV writes, a writable folder, and not the model or the image itself).
    """
    from edgeq.runtime import load

    image = Path(image)
    if output is not None:
        check_image_output(output, inputs=(model, image))
    m = load(model, threads=threads)
    bgr = read_input_image(image)
    dets = m.predict(bgr, conf=conf, iou=iou)
    if not draw and output is None:
        return dets, None
    from edgeq.runtime.draw import draw as draw_dets

    drawn = draw_dets(bgr, dets)
    if output is not None:
        write_image(output, drawn)
    return dets, drawn


def read_input_image(path: str | Path) -> np.ndarray:
    """An image file as BGR uint8, with errors that name it (missing, a folder, not an image)."""
    from edgeq.calib.preprocess import read_image

    path = Path(path)
    if not path.exists():
        raise EdgeqError(f"image not found: {path}", "check the path; predict takes one image file (JPEG, PNG, ...)")
    if not path.is_file():
        raise EdgeqError(f"{path} is not a file", "predict takes one image file (JPEG, PNG, ...)")
    try:
        return read_image(path)
    except OSError as e:
        raise EdgeqError(f"cannot read image {path}: {e.strerror or e}", "check the file's permissions") from None
    except EdgeqError as e:
        raise EdgeqError(e.what if str(path) in e.what else f"cannot decode image {path}: {e.what}",
                         e.fix or "pass a valid JPEG, PNG, BMP, WebP or TIFF file") from None


def check_image_output(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an image output edgeq cannot write, before any work: a suffix OpenCV has no
    encoder for (``x.txt``), a folder, an input, or a read-only place."""
    import cv2

    path = Path(path)
    if path.is_dir():  # its own message ("an existing folder"), whatever its name looks like
        return check_writable_output(path, inputs=inputs, kind="drawn image")
    if not path.suffix or not cv2.haveImageWriter("x" + path.suffix):
        what = "has no suffix" if not path.suffix else f"has the suffix {path.suffix!r}, which is not an image format"
        raise EdgeqError(f"cannot write the drawn image to {path}: it {what}",
                         f"name an image file, e.g. {path.with_suffix('.png').name} or {path.with_suffix('.jpg').name}")
    return check_writable_output(path, inputs=inputs, kind="drawn image")


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an image atomically, choosing the format from the suffix."""
    import cv2

    path = Path(path)
    if not path.suffix or not cv2.haveImageWriter("x" + path.suffix):
        raise EdgeqError(f"cannot encode an image as {path.suffix or path.name!r}", "use .png or .jpg")
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise EdgeqError(f"cannot encode an image as {path.suffix!r}", "use .png or .jpg")
    return write_atomic(path, buf.tobytes())


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
    from edgeq.eval.report import report_paths
    from edgeq.runtime import load

    inputs = [p for p in (model, data, compare) if p is not None]
    if save_json is not None:
        check_writable_output(save_json, inputs=inputs, kind="--save-json")
    if report:
        for path in report_paths(report):
            check_writable_output(path, inputs=inputs, kind="report")
    kwargs = dict(conf=conf, iou=iou, max_det=max_det, max_images=max_images, progress=progress,
                  keep_matches=ci and compare is not None)
    loaded = load(model, threads=threads)
    if loaded.meta.task in _WHOLE_IMAGE:
        return _validate_whole_image(loaded, data, images, compare=compare, save_json=save_json, report=report,
                                     max_images=max_images, threads=threads, progress=progress, ci=ci)
    validate = _validator(loaded.meta.task)
    result = validate(loaded, data, images, save_json=save_json, **kwargs)
    if compare is None:
        ev.print_result(result, top_classes=5)
        if report:
            ev.write_report(result, report)
        return result
    other = validate(load(compare, threads=threads), data, images, **kwargs)
    cmp = ev.compare(other, result, ci=ci)
    ev.print_comparison(cmp)
    if report:
        ev.write_report(cmp, report)
    return cmp


def _validator(task: str):
    """The validation function of a task (``model.meta.task``): COCO box/mask mAP by default."""
    if task == "obb":
        from edgeq.eval.rotated import validate_rotated

        return validate_rotated
    from edgeq.eval import validate

    return validate


#: whole-image tasks (``model.meta.task``) -> the eval module with their ``validate_task`` and
#: ``print_task``: top-1/top-5 on an image-folder set, mIoU on COCO instance masks
_WHOLE_IMAGE = {"classify": "edgeq.eval.classify", "semantic": "edgeq.eval.semantic"}


def _validate_whole_image(loaded, data, images, *, compare, save_json, report, max_images, threads, progress, ci):
    """Validate a classifier / semantic model (and ``compare`` on the same data); print the table."""
    import importlib

    from edgeq.runtime import load

    task = loaded.meta.task
    for flag, value in (("--save-json", save_json), ("--report", report), ("--ci", ci)):
        if value:
            raise EdgeqError(f"{flag} is not available for {task} models", f"validate without {flag}")
    module = importlib.import_module(_WHOLE_IMAGE[task])
    keep = compare is not None
    result = module.validate_task(loaded, data, images, max_images=max_images, progress=progress, keep=keep)
    if compare is None:
        module.print_task(result)
        return result
    other = module.validate_task(load(compare, threads=threads), data, images, max_images=max_images,
                                 progress=progress, keep=keep)
    module.print_task(result, other)
    return result
