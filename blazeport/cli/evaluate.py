"""``blazeport eval``: COCO AP against hand-drawn boxes or a teacher model."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from blazeport.cli.common import add_max_pixels, add_runtime_options, print_json
from blazeport.errors import BlazeportError
from blazeport.modelfiles.runtimes import RUNTIMES
from blazeport.options import AUTO_BACKEND, add_trust_code
from blazeport.pipeline.detector import load
from blazeport.pipeline.evaluate import evaluate_against_teacher, evaluate_on_boxes, load_boxes


def cmd_eval(args: argparse.Namespace) -> int:
    """COCO AP against a boxes file or a teacher; exit 1 when an image could not be read."""

    images = [Path(p) for p in args.images] if args.images else None
    if args.boxes:
        boxes = load_boxes(args.boxes)
        if images is None:
            images = [Path(args.boxes).parent / "images"]
            if not images[0].is_dir():
                raise BlazeportError(f"{images[0]} does not exist; pass --images DIR with the photos of {args.boxes}")
    elif images is None:
        raise BlazeportError("--teacher needs --images DIR (the photos to compare the two detectors on)")
    if args.by_size and not args.teacher:
        raise BlazeportError("--by-size reads face sizes and scores from the teacher's detections: use it with --teacher")
    for p in images:
        if not p.exists():
            raise BlazeportError(f"{p}: no such file or folder")
    detector = load(args.model, backend=args.backend, threads=args.threads, score_threshold=args.threshold,
                    device=args.device, trust_code=args.trust_code)
    if args.boxes:
        result = evaluate_on_boxes(detector, images, boxes, progress=True, max_pixels=args.max_pixels)
        against = str(args.boxes)
        if result["images"] == 0:
            raise BlazeportError(f"none of the images in {' '.join(map(str, images))} has an entry in {args.boxes} "
                                 "(matched by file name)")
    else:
        teacher = load(args.teacher, backend=args.teacher_backend, threads=args.threads, device=args.device,
                       trust_code=args.trust_code)
        result = evaluate_against_teacher(detector, teacher, images, progress=True, max_pixels=args.max_pixels,
                                          by_size=args.by_size)
        against = f"teacher {args.teacher} ({teacher.backend.name}, threshold {teacher.spec.score_threshold:g})"
        if result["images"] == 0:
            raise BlazeportError(f"no readable images in {' '.join(map(str, images))}")
    for msg in result.pop("messages"):
        if "no entry in the boxes file" not in msg:
            print(f"skipped: {msg}", file=sys.stderr)
    threshold = detector.spec.score_threshold if args.threshold is None else args.threshold
    report = {"model": str(args.model), "backend": detector.backend.name, "threshold": threshold, "against": against, **result}
    if args.json:
        print_json({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in report.items()})
    else:
        print(f"{args.model} ({detector.backend.name}, threshold {threshold:g}) against {against}")
        keys = ["AP50", "AP", "AP75", "AR100", "found50", "images", "references", "predictions", "skipped"]
        print("".join(f"{k:>12}" for k in keys))
        print("".join(f"{report[k]:>12.3f}" if isinstance(report[k], float) else f"{report[k]:>12}" for k in keys))
        if "breakdown" in report:
            _print_breakdown(report["breakdown"])
    return 1 if result.get("unreadable") else 0


def _print_breakdown(split: dict[str, Any]) -> None:
    """The --by-size tables: AP by the teacher face's width, faces found by teacher score."""
    print("by the teacher face's width / input width:")
    for band, v in split["by_face_width"].items():
        ap50, ap = ("-" if math.isnan(v[k]) else f"{v[k]:.3f}" for k in ("AP50", "AP"))
        print(f"  {band.replace('_', ' ').replace('pct', '%'):>12}  AP50 {ap50:>6}  AP {ap:>6}  ({v['references']} faces)")
    print("teacher faces found (IoU > 0.5) by the teacher's score:")
    for band, v in split["by_teacher_score"].items():
        print(f"  {band:>12}  {v['found50']} of {v['faces']}")


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``eval`` subcommand's arguments."""
    p = sub.add_parser("eval", help="COCO AP of a model against face boxes or a teacher model",
                       description="Average precision (pycocotools: AP50, AP at IoU 0.50:0.95, AP75, AR100) of a model's "
                       "detections, against hand-drawn boxes (--boxes, a boxes.json matched to images by file name) or "
                       "against a teacher model's detections (--teacher). Images without an entry and unreadable images "
                       "are skipped and counted; the exit status is 1 when an image could not be read. The default score "
                       "threshold is the spec's, so the detector is scored as it ships; COCO practice ranks detections "
                       "down to a low threshold (e.g. --threshold 0.1), which gives a fuller precision-recall curve.",
                       formatter_class=fmt)
    p.add_argument("--model", default="short_range", help="spec name, .safetensors or .tflite (default: short_range)")
    add_runtime_options(p, "the evaluated model")
    p.add_argument("--images", nargs="+", metavar="DIR",
                   help="image folders or files (default with --boxes: the boxes file's folder + /images)")
    refs = p.add_mutually_exclusive_group(required=True)
    refs.add_argument("--boxes", help="reference boxes: JSON {file: {width, height, boxes_xywh: [[left, top, w, h], ...]}}")
    refs.add_argument("--teacher", help="reference model (spec name or file): its detections are the references")
    p.add_argument("--teacher-backend", choices=tuple(RUNTIMES),
                   help="runtime of the teacher, which uses its spec's threshold (" + AUTO_BACKEND + ")")
    p.add_argument("--threshold", type=float, help="score threshold of the evaluated model (default: the spec's)")
    p.add_argument("--by-size", action="store_true",
                   help="with --teacher: also AP50 / AP by the teacher face's width over the input width (under 15%%, "
                   "15-40%%, over 40%%) and faces found by the teacher's score band")
    p.add_argument("--json", action="store_true", help="print the result as JSON (nan as null)")
    add_max_pixels(p)
    add_trust_code(p)
    p.set_defaults(func=cmd_eval)
