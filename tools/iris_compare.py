#!/usr/bin/env python
"""Two ways to irises, compared on real photos: the attention mesh's (``--refine``) and the iris model's (``--iris``).

blazeport offers two iris sources, from two different Google models with no common oracle:

- ``landmarks --refine``: ``face_landmark_with_attention``, landmarks 468-472 (MediaPipe's "left" eye,
  around 33/133) and 473-477 (its "right" eye, around 362/263), as ``FaceMesh(refine_landmarks=True)``
  gives them (parity: README);
- ``landmarks --iris``: the plain face mesh, then ``iris_landmark`` on each eye's crop (MediaPipe's
  ``iris_landmark_left_and_right_cpu`` graph, which its Python package does not run).

Each runs as a user would run it, on the same photos; faces are paired by landmark centroid. Per eye,
the 5 iris points (centre first, then 4 on the edge) are compared point for point. The orders differ on
one eye: the iris model sees the right eye's crop mirrored and MediaPipe un-mirrors x only
(``iris_landmark_cpu.pbtxt``'s ``flip_horizontally``; blazeport does the same), so that eye's edge points
1 and 3 come swapped against the refined mesh's (``RIGHT_EYE_ORDER``; on every eye of the photos, the
order that pairs the points best). Each distance in pixels is
divided by the eye's width (its two corner landmarks in the refined mesh, in pixels), so that faces of
every size weigh alike. Reported over eyes: the mean and the max of the 5 points, the centre alone, and
the iris radius each model gives (mean centre-to-edge distance / eye width).

    python tools/iris_compare.py [DIR_OR_IMAGES...] [--backend torch] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blazeport.pipeline.landmarks import load_landmarks  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402
from blazeport.pipeline.preprocess import ImageReadError, read_image  # noqa: E402
from tools.facemesh_parity import DATA, pair  # noqa: E402

# eye -> (first refined iris landmark, the eye's corner landmarks, the iris model's points in the refined
# mesh's order), MediaPipe's names
RIGHT_EYE_ORDER = (0, 3, 2, 1, 4)
EYES = {"left": (468, (33, 133), (0, 1, 2, 3, 4)), "right": (473, (362, 263), RIGHT_EYE_ORDER)}


def compare_eyes(refined: np.ndarray, iris: dict[str, Any], width: int, height: int) -> list[dict[str, float]]:
    """Per eye of one face: distances of the 5 iris points (refined mesh vs iris model) over the eye width."""
    px = np.array([width, height], np.float64)
    rows = []
    for eye, (first, (a, b), order) in EYES.items():
        ours = refined[first:first + 5, :2] * px  # (5, 2) px
        theirs = np.asarray(iris[eye].iris, np.float64)[list(order), :2] * px
        eye_width = float(np.linalg.norm((refined[a, :2] - refined[b, :2]) * px))
        d = np.linalg.norm(ours - theirs, axis=1) / eye_width  # (5,)
        radius = [float(np.linalg.norm(p[1:] - p[0], axis=1).mean() / eye_width) for p in (ours, theirs)]
        rows.append({"eye": eye, "eye_width_px": eye_width, "mean": float(d.mean()), "max": float(d.max()),
                     "centre": float(d[0]), "radius_refined": radius[0], "radius_iris_model": radius[1]})
    return rows


WIDE_EYE_PX = 20  # the figures again for eyes at least this wide: a face of ~100 px and more


def summarize(rows: list[dict[str, float]], wide: bool = True) -> dict[str, Any]:
    """Statistics over eyes of each per-eye figure (fractions of the eye width); again (``wide``) for the
    eyes at least :data:`WIDE_EYE_PX` wide, where a pixel is a small part of the eye."""
    out: dict[str, Any] = {"eyes": len(rows)}
    if wide:
        out["wide_eyes"] = summarize([r for r in rows if r["eye_width_px"] >= WIDE_EYE_PX], wide=False)
    if not rows:
        return out
    for key in ("mean", "max", "centre", "radius_refined", "radius_iris_model"):
        v = np.array([r[key] for r in rows])
        out[key] = {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                    "max": float(v.max())}
    out["eye_width_px"] = {"median": float(np.median([r["eye_width_px"] for r in rows])),
                           "min": float(min(r["eye_width_px"] for r in rows))}
    out["worst"] = max(rows, key=lambda r: r["mean"])
    return out


def run(paths: list[Path], backend: str | None = None, max_faces: int | None = 10) -> dict[str, Any]:
    refined = load_landmarks(refine=True, backend=backend, max_faces=max_faces)
    iris = load_landmarks(iris=True, backend=backend, max_faces=max_faces)
    rows: list[dict[str, float]] = []
    faces = [0, 0]
    skipped = 0
    for path in paths:
        try:
            img = read_image(path)
        except ImageReadError:
            skipped += 1
            continue
        h, w = img.shape[:2]
        a, b = refined.process(img), iris.process(img)
        faces[0] += len(a)
        faces[1] += len(b)
        for i, j in pair([f.landmarks[:468] for f in a], [f.landmarks for f in b]):
            for r in compare_eyes(a[i].landmarks, b[j].iris, w, h):
                rows.append({**r, "image": str(path)})
    return {"images": len(paths) - skipped, "skipped": skipped, "faces_refined": faces[0], "faces_iris": faces[1],
            **summarize(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", help=f"images or folders (default: everything under {DATA})")
    ap.add_argument("--backend", help="runtime for the models (default: blazeport's; the attention mesh needs torch "
                    "or an export)")
    ap.add_argument("--max-faces", type=int, default=10)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    paths = list_images(args.images or [DATA])
    t0 = time.perf_counter()
    r = run(paths, args.backend, args.max_faces)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{r['images']} images, {r['faces_refined']} faces (refined) / {r['faces_iris']} (iris), {r['eyes']} eyes "
          f"compared (median eye width {r['eye_width_px']['median']:.0f} px), distances / eye width:")
    for key, label in (("mean", "mean of the 5 points"), ("max", "worst of the 5 points"), ("centre", "iris centre")):
        s = r[key]
        print(f"  {label:<22} mean {s['mean']:.3f}  median {s['median']:.3f}  90th pct {s['p90']:.3f}  max {s['max']:.3f}")
    print(f"  iris radius / eye width: refined mesh median {r['radius_refined']['median']:.3f}, "
          f"iris model median {r['radius_iris_model']['median']:.3f}")
    wide = r["wide_eyes"]
    if wide["eyes"]:
        print(f"eyes at least {WIDE_EYE_PX} px wide ({wide['eyes']}):")
        for key, label in (("mean", "mean of the 5 points"), ("max", "worst of the 5 points"), ("centre", "iris centre")):
            s = wide[key]
            print(f"  {label:<22} mean {s['mean']:.3f}  median {s['median']:.3f}  90th pct {s['p90']:.3f}  "
                  f"max {s['max']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
