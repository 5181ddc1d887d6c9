#!/usr/bin/env python
"""How well the teacher agrees with itself: its detections on a photo changed in ways a person cannot
see, scored against its detections on the photo itself, like a student (COCO AP50 / AP, by face width
and teacher score band).

    python tools/teacher_stability.py --teacher short_range --images ../shared/data/unlabeled

A student is scored against the teacher's detections at the teacher's threshold, so a face the
teacher scores 0.52 is a face and one at 0.48 is not. If a mirror image, a JPEG re-encode or a 2%
resize already moves the teacher's own borderline faces across its threshold, a student, which sees
the photo through different weights, cannot be expected to agree more closely than that: this is
the noise floor of the student tables. Perturbations:

- ``flip``: the photo mirrored (detections mirrored back);
- ``jpeg90``: the photo re-encoded as JPEG at quality 90;
- ``resize98``: the photo resized to 98% (INTER_AREA; normalized coordinates are unchanged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blazeport  # noqa: E402
from blazeport.pipeline.evaluate import breakdown, coco_ap  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402
from blazeport.pipeline.postprocess import Detection  # noqa: E402
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized  # noqa: E402


def _flip(image: np.ndarray) -> tuple[np.ndarray, object]:
    def back(d: Detection) -> Detection:
        x, y, w, h = d.box
        return Detection(d.score, (1.0 - x - w, y, w, h))
    return np.ascontiguousarray(image[:, ::-1]), back


def _jpeg(image: np.ndarray) -> tuple[np.ndarray, object]:
    _, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1].copy(), None


def _resize(image: np.ndarray) -> tuple[np.ndarray, object]:
    return cv2.resize(image, None, fx=0.98, fy=0.98, interpolation=cv2.INTER_AREA), None


PERTURBATIONS = {"flip": _flip, "jpeg90": _jpeg, "resize98": _resize}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    teacher = blazeport.load(args.teacher, backend="torch")
    size = teacher.spec.input_size
    refs: list[list[Detection]] = []
    preds: dict[str, list[list[Detection]]] = {k: [] for k in PERTURBATIONS}
    frames: list[tuple[float, float]] = []
    for path in list_images(args.images):
        try:
            image = read_image_sized(path)[0]
        except ImageReadError:
            continue
        h, w = image.shape[:2]
        frames.append((w * size / max(w, h), h * size / max(w, h)))
        refs.append(teacher.detect(image))
        for name, perturb in PERTURBATIONS.items():
            changed, back = perturb(image)
            dets = teacher.detect(changed)
            preds[name].append([back(d) for d in dets] if back else dets)
    report = {"teacher": args.teacher, "images": len(refs), "faces": sum(map(len, refs)), "perturbations": {}}
    for name, p in preds.items():
        ap_all = coco_ap(p, [[d.box for d in r] for r in refs], frames)
        split = breakdown(p, refs, size, frames)
        report["perturbations"][name] = {"AP50": ap_all["AP50"], "AP": ap_all["AP"], **split}
        bands = ", ".join(f"{k} {v['found50']}/{v['faces']}" for k, v in split["by_teacher_score"].items())
        print(f"{name:>9}: AP50 {ap_all['AP50']:.3f}  AP {ap_all['AP']:.3f}  teacher faces found by score band: {bands}")
    print(f"({report['images']} images, {report['faces']} teacher faces)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
