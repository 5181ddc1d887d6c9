#!/usr/bin/env python
"""Photos made hard, truth from the clean photo: how the teacher and students hold up when a camera changes a photo.

    python tools/changed_photos.py --images $DATA/faces-boxed/images ~/.cache/blazeport/package_images/photos \\
        --students short_range_resnet --out runs/changed

For each held-out photo the TEACHER's detections on the clean photo are the truth. Each change (low
light, sensor noise, motion blur, focus blur, JPEG, colour cast, a flip, a quarter turn, a half turn,
a crop, a tilt) is applied to the photo, the truth is carried through it (a change that moves faces
maps the boxes with the same homography: :func:`blazeport.distill.changes.homography`, exact for
flips and turns), and the teacher and each student are scored on the changed photo against it: COCO
AP50 / AP (:func:`blazeport.pipeline.evaluate.coco_ap`, pycocotools), every detector at its own spec threshold
(the detector as it ships). A teacher that labelled the changed photo itself would score 1.0 by
definition; this measures what Noisy Student training (``distill --augment ns_*``) is for: whether a
model finds on a changed photo what the teacher finds on the clean one.

Photos are read as ``blazeport eval`` reads them (full size), and a change means the same to every
photo whatever its size: blur lengths and radii are given in pixels of the model's input and scaled
by the photo's long side over the input size (:func:`blazeport.distill.changes.apply_photometric`).
Each change has one fixed strength (:data:`CHANGES`; ``--param NAME.KEY=VALUE`` sets another); the
motion blur's angle, the turn's direction, the crop window, the tilt's directions and the noise are
drawn per photo from ``--seed``, so a report is repeatable.

Writes ``OUT/changed_photos.json`` (every figure, the parameters, the photo list) and
``OUT/changed_photos.md`` (the table), both with :func:`blazeport.files.write_atomic`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blazeport  # noqa: E402
from blazeport import files  # noqa: E402
from blazeport.distill.changes import GEOMETRIC, apply_photometric, describe, homography, mirrors  # noqa: E402
from blazeport.pipeline.evaluate import coco_ap  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402
from blazeport.pipeline.postprocess import Detection  # noqa: E402
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized  # noqa: E402

Box = tuple[float, float, float, float]

# name -> (the change's kind, its fixed parameters; None: drawn per photo in _params)
CHANGES: dict[str, dict[str, float]] = {
    "dark": {"gamma": 2.0, "gain": 0.4, "noise": 5.0},
    "noise": {"sigma": 12.0},
    "motion": {"length": 2.0},  # input pixels; the angle is drawn per photo
    "focus": {"radius": 2.0},
    "jpeg": {"quality": 15.0},
    "cast": {"r": 1.25, "g": 1.0, "b": 0.75},
    "flip": {},
    "turn": {},  # a quarter turn, its direction drawn per photo
    "half": {},
    "crop": {"zoom": 1.4},  # the window drawn per photo
    "tilt": {"corner": 0.06},  # each corner moved by this share of the side, directions drawn per photo
}
DRAWN = {"motion": "angle drawn per photo", "turn": "direction drawn per photo", "crop": "window drawn per photo",
         "tilt": "directions drawn per photo"}
DEFAULT_CHANGES = ("dark", "noise", "motion", "focus", "jpeg", "cast", "flip", "turn", "half", "crop", "tilt")


def _params(name: str, fixed: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """One photo's parameters of change ``name``: the fixed ones, and those drawn per photo."""
    if name == "motion":
        return {**fixed, "angle": float(rng.uniform(0, 180))}
    if name == "turn":
        return {"k": float(rng.choice([1, 3]))}
    if name == "crop":
        return {**fixed, "u": float(rng.uniform()), "v": float(rng.uniform())}
    if name == "tilt":
        return {f"d{i}": float(rng.choice([-fixed["corner"], fixed["corner"]])) for i in range(8)}
    return dict(fixed)


def change_photo(photo: np.ndarray, name: str, params: dict[str, float], rng: np.random.Generator,
                 input_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The changed photo, and the 3x3 map of normalized coordinates it moved faces by (None: faces stay)."""
    if name not in GEOMETRIC:
        scale = max(photo.shape[:2]) / input_size
        out = apply_photometric(photo.astype(np.float32) / 255.0, [(name, params)], rng, scale)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), None
    h, w = photo.shape[:2]
    m = homography(name, params, 1.0)  # in normalized coordinates (a turn swaps width and height)
    if name == "flip":
        return np.ascontiguousarray(photo[:, ::-1]), m
    if name in ("turn", "half"):
        return np.ascontiguousarray(np.rot90(photo, int(params["k"]) if name == "turn" else 2)), m
    pixels = np.diag([w, h, 1.0]) @ m @ np.diag([1 / w, 1 / h, 1.0])  # crop, tilt: the same size out
    return cv2.warpPerspective(photo, pixels, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), m


def carry(truth: list[Detection], m: np.ndarray | None) -> list[Box]:
    """The clean photo's detections as normalized (x, y, w, h) boxes of the changed photo; a face whose centre
    a crop or a tilt moved out of the picture is no longer in it, and no longer counts."""
    boxes = [tuple(float(v) for v in d.box) for d in truth]
    if m is None:
        return boxes  # type: ignore[return-value]
    out = []
    for x, y, bw, bh in boxes:
        corners = np.array([[x, y, 1], [x + bw, y, 1], [x + bw, y + bh, 1], [x, y + bh, 1]]) @ m.T
        corners = corners[:, :2] / corners[:, 2:]
        lo, hi = corners.min(0), corners.max(0)
        if not (0.0 <= (lo[0] + hi[0]) / 2 <= 1.0 and 0.0 <= (lo[1] + hi[1]) / 2 <= 1.0):
            continue
        out.append((float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])))
    return out


def measure(images: list[str], teacher: str, students: list[str], changes: list[str], seed: int = 0,
            trust_code: bool = False, params: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Every figure of the report (see the module docstring); ``params`` overrides :data:`CHANGES`' strengths."""
    strength = {c: {**CHANGES[c], **(params or {}).get(c, {})} for c in changes}
    t = blazeport.load(teacher)
    models = {teacher: t, **{s: blazeport.load(s, trust_code=trust_code) for s in students}}
    size = t.spec.input_size
    truth_n: dict[str, int] = {}
    preds: dict[str, dict[str, list[list[Detection]]]] = {c: {m: [] for m in models} for c in ["clean", *changes]}
    refs: dict[str, list[list[Box]]] = {c: [] for c in ["clean", *changes]}
    sizes: dict[str, list[tuple[int, int]]] = {c: [] for c in ["clean", *changes]}
    used, skipped = [], []
    for i, path in enumerate(list_images(images)):
        try:
            photo = read_image_sized(path)[0]
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        used.append(str(path))
        truth = t.detect(photo)
        for c in ["clean", *changes]:
            rng = np.random.default_rng([seed, i, sorted(CHANGES).index(c) if c in CHANGES else 99])
            if c == "clean":
                changed, m = photo, None
            else:
                changed, m = change_photo(photo, c, _params(c, strength[c], rng), rng, size)
            refs[c].append(carry(truth, m))
            sizes[c].append((changed.shape[1], changed.shape[0]))
            for name, model in models.items():
                preds[c][name].append(model.detect(changed))
        truth_n[str(path)] = len(truth)
    rows = {}
    for c in ["clean", *changes]:
        text = "none" if c == "clean" else describe([(c, strength[c])])
        rows[c] = {"faces": sum(len(r) for r in refs[c]), "mirrors": c in CHANGES and mirrors(c),
                   "parameters": text + (f", {DRAWN[c]}" if c in DRAWN else ""),
                   "strength": strength.get(c, {})}
        for name in models:
            ap = coco_ap(preds[c][name], refs[c], sizes[c])
            rows[c][name] = {"AP50": ap["AP50"], "AP": ap["AP"], "found50": ap["found50"], "detections": ap["predictions"]}
    return {"teacher": teacher, "students": students, "seed": seed, "images": len(used), "photos": used,
            "skipped": skipped, "teacher_faces_clean": sum(truth_n.values()), "changes": rows}


def markdown(report: dict[str, Any]) -> str:
    models = [report["teacher"], *report["students"]]
    scores = " | ".join(f"{m}: AP50 / AP" for m in models)
    head = f"| change | parameters (lengths in input pixels) | truth faces | {scores} |"
    lines = [head, "|" + "---|" * (3 + len(models))]
    for c, row in report["changes"].items():
        cells = " | ".join(f"{row[m]['AP50']:.3f} / {row[m]['AP']:.3f}" for m in models)
        lines.append(f"| {c} | {row['parameters']} | {row['faces']} | {cells} |")
    return "\n".join(lines) + f"\n\n{report['images']} photos; truth: the teacher's detections on the clean photo.\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", required=True, help="held-out photos (folders or files)")
    ap.add_argument("--teacher", default="short_range")
    ap.add_argument("--students", nargs="*", default=["short_range_resnet"], help="model names or files")
    ap.add_argument("--changes", nargs="+", default=list(DEFAULT_CHANGES), choices=list(CHANGES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="another strength for a change, e.g. motion.length=4 (input pixels), dark.gain=0.5")
    ap.add_argument("--trust-code", action="store_true", help="for a student whose backbone is your own module")
    ap.add_argument("--out", type=Path, required=True, help="folder for changed_photos.json and changed_photos.md")
    ap.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    args = ap.parse_args(argv)
    params: dict[str, dict[str, float]] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        name, _, field = key.partition(".")
        if name not in CHANGES or field not in CHANGES[name]:
            ap.error(f"--param {item}: expected NAME.KEY=VALUE with one of "
                     f"{', '.join(f'{n}.{k}' for n, d in CHANGES.items() for k in d)}")
        params.setdefault(name, {})[field] = float(value)
    held = [f for f in ("changed_photos.json", "changed_photos.md") if (args.out / f).exists()]
    if held and not args.overwrite:
        ap.error(f"{args.out / held[0]} exists; pass --overwrite to replace it")
    report = measure(args.images, args.teacher, args.students, args.changes, args.seed, args.trust_code, params)
    table = markdown(report)
    files.write_atomic(args.out / "changed_photos.json", json.dumps(report, indent=2).encode())
    files.write_atomic(args.out / "changed_photos.md", table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
