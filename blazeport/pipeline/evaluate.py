"""Average precision of detections: against hand-drawn boxes, and against a teacher detector.

The AP itself comes from ``pycocotools`` (the COCO reference implementation: greedy matching by
score, 101-point interpolated precision, IoU thresholds 0.50:0.05:0.95), not from a home-made
loop, so the numbers mean what every detection paper means by them. The ground truth and result
structures are built in memory (one category, ``face``; ``area`` = w * h in pixels; ``iscrowd`` 0)
and pycocotools' printing is silenced.

Two uses:

* :func:`evaluate_on_boxes` scores a :class:`~blazeport.pipeline.detector.Detector` on a folder of photos
  against boxes in the ``faces-boxed/boxes.json`` format (:func:`load_boxes`).
* :func:`agreement_with_teacher` takes a teacher's detections as the references and the student's
  as predictions: how well a distilled student reproduces its teacher, on unlabeled images.

Score threshold. COCO AP ranks detections by score and integrates precision over recall, so it is
usually measured with a low threshold (the curve is cut where the detector stops reporting).
``blazeport eval`` nevertheless defaults to the spec's own threshold (0.5 short range, 0.65 back,
0.6 full range): the threshold is applied *before* MediaPipe's weighted NMS, so it changes which
candidates get blended and therefore the boxes themselves. The default thus scores the detector
exactly as it ships (what ``blazeport detect`` and MediaPipe return). Pass a lower ``--threshold``
(e.g. 0.1) for the textbook, full-curve AP, and report which threshold a number was measured at.

Boxes are compared as they come: BlazeFace's boxes are not clipped to the image, and they are not
reshaped to the reference annotation's convention (dlib's tight squares in ``faces-boxed``), so
AP75 and AP also measure how well the two box conventions agree, AP50 mostly whether faces are found.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.modelfiles.verify import iou
from blazeport.pipeline.boxes import Box, _check_inside, load_boxes, validate_boxes
from blazeport.pipeline.detector import Detector
from blazeport.pipeline.photos import list_images
from blazeport.pipeline.postprocess import Detection
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized
from blazeport.progress import progress_bar

__all__ = ["SCORE_BANDS", "SIZE_BANDS", "agreement_with_teacher", "breakdown", "coco_ap", "evaluate_against_teacher",
           "evaluate_on_boxes", "load_boxes", "validate_boxes"]

MAX_DETS = [1, 10, 100]  # pycocotools' default; 100 per image does not cut group photos


def _nan_result(value: float) -> dict[str, float]:
    return {"AP50": value, "AP": value, "AP75": value, "AR100": value, "found50": 0}


def coco_ap(predictions: list[list[Detection]], references: list[list[tuple[float, float, float, float]]],
            sizes: list[tuple[int, int]], area_bands: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """COCO box AP of ``predictions`` against ``references``, one list of each per image.

    Args:
        predictions: per image, :class:`Detection` objects (normalized xmin, ymin, w, h and a score).
        references: per image, reference boxes as normalized (xmin, ymin, w, h); no scores.
        sizes: per image, (width, height) in pixels, used to turn both into pixel boxes (so IoU
            and area are those of the real image, not of a unit square).

    Returns:
        ``{"AP50", "AP" (IoU 0.50:0.95), "AP75", "AR100" (recall, 100 detections per image),
        "found50" (references matched at IoU 0.5), "images", "references", "predictions"}``. When
        there are no references at all the AP and AR values are ``float('nan')`` (precision is
        undefined; pycocotools reports -1). When there are references but no predictions they are 0.0.
        With ``area_bands`` (label -> (min, max) box area in pixels, COCO's ``areaRng``), also
        ``"by_area": {label: {"AP50", "AP", "references"}}``: COCO evaluates each band with the
        references outside it ignored, as for its small / medium / large.
    """
    if not (len(predictions) == len(references) == len(sizes)):
        raise ValueError(f"coco_ap: {len(predictions)} prediction lists, {len(references)} reference lists "
                         f"and {len(sizes)} sizes; expected one of each per image")
    n_refs = sum(len(r) for r in references)
    n_preds = sum(len(p) for p in predictions)
    counts = {"images": len(sizes), "references": n_refs, "predictions": n_preds}
    if n_refs == 0:
        return {**_nan_result(math.nan), **counts}
    if n_preds == 0:
        return {**_nan_result(0.0), **counts}

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gts, dts = [], [], []
    for i, ((width, height), refs, dets) in enumerate(zip(sizes, references, predictions, strict=True), start=1):
        images.append({"id": i, "width": int(width), "height": int(height)})
        for x, y, w, h in refs:
            box = [x * width, y * height, w * width, h * height]
            # ids start at 1: pycocotools treats a matched id of 0 as "unmatched"
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": 1, "bbox": box,
                        "area": box[2] * box[3], "iscrowd": 0})
        for d in dets:
            x, y, w, h = d.box
            dts.append({"image_id": i, "category_id": 1, "score": float(d.score),
                        "bbox": [x * width, y * height, w * width, h * height]})

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "face"}]}
        truth.createIndex()
        result = truth.loadRes(dts)
        ev = COCOeval(truth, result, iouType="bbox")
        ev.params.maxDets = list(MAX_DETS)
        if area_bands:
            ev.params.areaRng = [[0.0, 1e10], *(list(band) for band in area_bands.values())]
            ev.params.areaRngLbl = ["all", *area_bands]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s >= 0 else math.nan for s in ev.stats]  # -1: nothing to evaluate
    # references matched by some prediction at IoU >= 0.5 (all areas, the largest maxDets)
    all_areas = ev.params.areaRng[0]
    found = sum(int((e["gtMatches"][0] > 0).sum()) for e in ev.evalImgs if e is not None and e["aRng"] == all_areas)
    out = {"AP50": stats[1], "AP": stats[0], "AP75": stats[2], "AR100": stats[8], "found50": found, **counts}
    if area_bands:
        precision = ev.eval["precision"]  # (IoU thresholds, recall points, classes, areas, maxDets)
        out["by_area"] = {}
        for a, (label, (lo, hi)) in enumerate(area_bands.items(), start=1):
            n = sum(1 for g in gts if lo <= g["area"] < hi)
            p50, p_all = precision[0, :, 0, a, -1], precision[:, :, 0, a, -1]
            out["by_area"][label] = {"AP50": float(p50[p50 > -1].mean()) if n and (p50 > -1).any() else math.nan,
                                     "AP": float(p_all[p_all > -1].mean()) if n and (p_all > -1).any() else math.nan,
                                     "references": n}
    return out


# Face-size bands by the teacher box's width over the model input's width (issue 13's small / medium / large)
SIZE_BANDS: dict[str, tuple[float, float]] = {"under_15pct": (0.0, 0.15), "15_to_40pct": (0.15, 0.40),
                                              "over_40pct": (0.40, 10.0)}
SCORE_BANDS: dict[str, tuple[float, float]] = {"0.5-0.6": (0.5, 0.6), "0.6-0.7": (0.6, 0.7), "0.7-0.8": (0.7, 0.8),
                                               "0.8-1.0": (0.8, 1.01)}


def breakdown(preds: list[list[Detection]], refs: list[list[Detection]], size: int,
              frames: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Where a student fails against its teacher: COCO AP50 / AP by the teacher face's width over the
    model input's width (:data:`SIZE_BANDS`; COCO area ranges, references outside a band ignored), and
    how many of the teacher's faces in each teacher-score band (:data:`SCORE_BANDS`) a student
    detection overlaps at IoU > 0.5.

    ``frames``: each image's (width, height) in the ``size`` x ``size`` input frame (a letterboxed
    photo of W x H is W * size / max(W, H) wide); default: already the input frame."""

    frames = frames if frames is not None else [(size, size)] * len(preds)
    bands = {k: ((lo * size) ** 2, (hi * size) ** 2) for k, (lo, hi) in SIZE_BANDS.items()}
    ap = coco_ap(preds, [_normalized(r) for r in refs], frames, area_bands=bands)  # type: ignore[arg-type]
    by_score = {k: {"faces": 0, "found50": 0} for k in SCORE_BANDS}
    for ps, rs in zip(preds, refs, strict=True):
        for r in rs:
            band = next((k for k, (lo, hi) in SCORE_BANDS.items() if lo <= r.score < hi), None)
            if band is not None:
                by_score[band]["faces"] += 1
                by_score[band]["found50"] += any(iou(r.box, p.box) > 0.5 for p in ps)
    return {"by_face_width": ap.get("by_area", {}), "by_teacher_score": by_score}


def _normalized(dets: list[Detection]) -> list[Box]:
    return [tuple(float(v) for v in d.box) for d in dets]  # type: ignore[misc]


def _agreement(student: Detector, teacher: Detector, images: Iterable[np.ndarray],
               by_size: bool = False) -> dict[str, Any]:
    preds: list[list[Detection]] = []
    refs: list[list[Detection]] = []
    sizes: list[tuple[int, int]] = []
    for image in images:
        h, w = image.shape[:2]
        refs.append(teacher.detect(image))
        preds.append(student.detect(image))
        sizes.append((w, h))
    result: dict[str, Any] = coco_ap(preds, [_normalized(r) for r in refs], sizes)
    if by_size:
        s = teacher.spec.input_size  # bands are read in the letterboxed input frame both models see
        result["breakdown"] = breakdown(preds, refs, s, [(w * s / max(w, h), h * s / max(w, h)) for w, h in sizes])
    return result


def agreement_with_teacher(student: Detector, teacher: Detector, images: list[np.ndarray]) -> dict[str, float]:
    """COCO AP of the student's detections, taking the teacher's boxes as the references.

    Both run on the same RGB uint8 ``images``, each with its own score threshold (give the student
    a low one for a full precision-recall curve; the teacher's defines what counts as a face). The
    teacher's scores are ignored. Returns :func:`coco_ap`'s dict; a detector against itself gives
    1.0, and AP is nan when the teacher finds no face in any image.
    """
    return _agreement(student, teacher, images)


def _read_all(paths: Iterable[Path], unreadable: list[str],
              max_pixels: int | None = None) -> Iterator[tuple[Path, np.ndarray, tuple[int, int]]]:
    """Yield (path, RGB image, the file's full (width, height)); an unreadable file is skipped and its
    message appended to ``unreadable``. The size differs from the array's for a JPEG decoded reduced."""
    for path in paths:
        try:
            image, size = read_image_sized(path, max_pixels)
        except ImageReadError as exc:
            unreadable.append(str(exc))
            continue
        yield path, image, size


def evaluate_on_boxes(detector: Detector, images: str | Path | list[str | Path],
                      boxes: str | Path | dict[str, dict[str, Any]], progress: bool = False,
                      max_pixels: int | None = None) -> dict[str, Any]:
    """COCO AP of ``detector`` on image files against reference boxes (:func:`load_boxes` format).

    ``images`` is a folder (searched recursively) or a list of files and folders; images are
    matched to ``boxes`` entries by file name. Images without an entry and unreadable images are
    skipped and counted, never fatal; images over ``max_pixels`` (default
    :data:`blazeport.pipeline.preprocess.MAX_PIXELS`) count as unreadable. Reference boxes are normalized with
    the entry's ``width`` and ``height`` (the file's own full size when absent, even when a big JPEG
    was decoded reduced), so a proportionally resized copy still scores. A mapping given as ``boxes``
    is checked like a file (:func:`validate_boxes`); a box outside an image whose size only the file
    tells is a :class:`BlazeportError`.

    Returns :func:`coco_ap`'s dict plus ``skipped`` (images not evaluated: no entry or unreadable),
    ``unreadable`` (the part of ``skipped`` that could not be decoded), ``missing`` (annotated
    files not found among ``images``, their boxes left out) and ``messages`` (why each was skipped).
    """
    source = "boxes" if isinstance(boxes, dict) else str(boxes)
    table = validate_boxes(boxes, source) if isinstance(boxes, dict) else load_boxes(boxes)
    paths = list_images(list(images) if isinstance(images, list) else [images])
    annotated = [p for p in paths if p.name in table]
    unreadable: list[str] = []
    preds: list[list[Detection]] = []
    refs: list[list[Box]] = []
    sizes: list[tuple[int, int]] = []
    seen: set[str] = set()
    bar = progress_bar(annotated, desc="eval", unit="img", enabled=progress and len(annotated) > 1)
    for path, image, (w, h) in _read_all(bar, unreadable, max_pixels):
        entry = table[path.name]
        ref_w, ref_h = int(entry.get("width", w)), int(entry.get("height", h))
        if "width" not in entry or "height" not in entry:  # only now is the image's size known
            for i, box in enumerate(entry["boxes_xywh"]):
                _check_inside(f"{source}: entry {path.name!r}, box {i}", tuple(box), ref_w, ref_h)  # type: ignore[arg-type]
        refs.append([(x / ref_w, y / ref_h, bw / ref_w, bh / ref_h) for x, y, bw, bh in entry["boxes_xywh"]])
        preds.append(detector.detect(image))
        sizes.append((ref_w, ref_h))
        seen.add(path.name)
    result: dict[str, Any] = coco_ap(preds, refs, sizes)
    result["skipped"] = len(paths) - len(preds)
    result["unreadable"] = len(unreadable)
    found = {p.name for p in annotated}
    result["missing"] = sum(1 for name in table if name not in found)
    result["messages"] = [f"{p}: no entry in the boxes file" for p in paths if p.name not in table] + unreadable
    return result


def evaluate_against_teacher(student: Detector, teacher: Detector, images: str | Path | list[str | Path],
                             progress: bool = False, max_pixels: int | None = None,
                             by_size: bool = False) -> dict[str, Any]:
    """:func:`agreement_with_teacher` on image files, streamed (unreadable files and files over
    ``max_pixels``, default :data:`blazeport.pipeline.preprocess.MAX_PIXELS`, skipped and counted).
    ``by_size`` adds :func:`breakdown` under ``"breakdown"``."""
    paths = list_images(list(images) if isinstance(images, list) else [images])
    unreadable: list[str] = []
    bar = progress_bar(paths, desc="eval", unit="img", enabled=progress and len(paths) > 1)
    result: dict[str, Any] = _agreement(student, teacher, (img for _, img, _ in _read_all(bar, unreadable, max_pixels)),
                                        by_size)
    result["skipped"] = len(unreadable)
    result["unreadable"] = len(unreadable)
    result["messages"] = unreadable
    return result
