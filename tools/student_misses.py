#!/usr/bin/env python
"""Which of the teacher's faces a student misses, by face size and by teacher score, on a run's test split.

    python tools/student_misses.py runs/fr_mobilenet/student.safetensors --images ../shared/data/unlabeled

The split is the distill run's own (file-name hash; ``--val-fraction`` / ``--test-fraction`` as in
the run). Each teacher face (score >= the spec's threshold) counts as found when a student
detection at score >= 0.25 (the AP's prediction threshold) overlaps it at IoU > 0.5, in the model's
input frame. Also counts the student's false faces (score >= the threshold, no teacher face) and
the misses by source folder, and prints the COCO AP50 / AP by face-width band that ``blazeport
distill`` writes for its test split (:func:`blazeport.pipeline.evaluate.breakdown`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np
import torch

import blazeport
from blazeport.distill.dataset import ImageSet, make_input
from blazeport.distill.validation import AP_PREDICTION_THRESHOLD
from blazeport.modelfiles.verify import iou
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.evaluate import breakdown
from blazeport.pipeline.postprocess import postprocess
from blazeport.pipeline.preprocess import Letterbox

WIDTHS = [(0.0, 0.05), (0.05, 0.1), (0.1, 0.15), (0.15, 0.3), (0.3, 0.6), (0.6, 2.0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student")
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    args = ap.parse_args()

    student = blazeport.load(args.student)
    spec = student.spec
    teacher = blazeport.load(spec.teacher, backend="torch")
    size = spec.input_size
    images = ImageSet.load(args.images, size)
    _, _, test = images.split(args.val_fraction, args.test_fraction)
    x = torch.from_numpy(np.stack([make_input(images.images[i], size) for i in test])).permute(0, 3, 1, 2)
    with torch.no_grad():
        t_out = [a.numpy() for a in teacher.backend.module(x)]
        s_out = [a.numpy() for a in student.backend.module(x)]
    anchors, pads = anchors_for(spec), [Letterbox(0, 0, 0, 0)] * len(test)
    t_dets = postprocess(*t_out, anchors, spec, pads)
    s_dets = postprocess(*s_out, anchors, spec, pads, AP_PREDICTION_THRESHOLD)
    faces, false = [], 0
    for i, (ts, ss) in enumerate(zip(t_dets, s_dets, strict=True)):
        for f in ts:
            found = any(iou(f.box, g.box) > 0.5 for g in ss)
            faces.append((f.box[2], f.score, found, images.paths[test[i]].parent.name))
        false += sum(1 for g in ss if g.score >= spec.score_threshold and all(iou(g.box, f.box) <= 0.5 for f in ts))
    print(f"{spec.name} against {spec.teacher} on {len(test)} test photos: {sum(f[2] for f in faces)} of {len(faces)} "
          f"teacher faces found, {false} false faces")
    for lo, hi in WIDTHS:  # finer than distill's bands: where below 15% the misses are
        band = [f for f in faces if lo <= f[0] < hi]
        if band:
            print(f"  face width / input width {lo:.2f}-{min(hi, 1.0):.2f}: {sum(f[2] for f in band)} of {len(band)} found")
    split = breakdown(s_dets, t_dets, size)  # what `blazeport distill` reports for its test split
    for band, n in split["by_teacher_score"].items():
        if n["faces"]:
            print(f"  teacher score {band}: {n['found50']} of {n['faces']} found")
    print("  missed by source folder:", dict(Counter(f[3] for f in faces if not f[2])))
    print("  COCO AP50 / AP by face width: " + ", ".join(f"{k} {v['AP50']:.3f} / {v['AP']:.3f} ({v['references']} faces)"
                                                        for k, v in split["by_face_width"].items() if v["references"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
