#!/usr/bin/env python
"""blazeport's face landmarks against MediaPipe's own FaceMesh on real photos.

``mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False,
max_num_faces=N, min_detection_confidence=0.5)`` is the oracle; blazeport runs
:func:`blazeport.pipeline.landmarks.load_landmarks` with the same settings on the torch and tflite backends.
Faces are paired by the distance between their landmark centroids; the report gives the faces
found by each, the worst landmark difference (x, y; normalized to the image) and the worst z
difference over the pairs.

Usage::

    python tools/facemesh_parity.py                       # astronaut + faces-boxed + 3 photos of each unlabeled folder
    python tools/facemesh_parity.py DIR_OR_IMAGES... --max-faces 5 --backends torch tflite onnx --json out.json
    python tools/facemesh_parity.py --iris   # also iris centres vs FaceMesh(refine_landmarks=True) (not parity)
    python tools/facemesh_parity.py --refine --backends torch onnx   # the attention mesh, 478 landmarks
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blazeport.pipeline.landmarks import load_landmarks  # noqa: E402
from blazeport.pipeline.photos import list_images  # noqa: E402
from blazeport.pipeline.preprocess import read_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LANDMARK_TOL = 2e-3  # the issue's tolerance on every normalized landmark coordinate


def default_images(data: Path = DATA, per_folder: int = 3) -> list[Path]:
    """The faces-boxed photos plus ``per_folder`` evenly spaced photos of each unlabeled folder."""
    images = sorted((data / "faces-boxed" / "images").glob("*.jpg"))
    unlabeled = data / "unlabeled"
    if unlabeled.is_dir():
        for folder in sorted(p for p in unlabeled.iterdir() if p.is_dir()):
            files = list_images([folder])
            if files:
                idx = np.linspace(0, len(files) - 1, min(per_folder, len(files))).round().astype(int)
                images += [files[i] for i in sorted(set(idx.tolist()))]
    return images


def mediapipe_landmarks(images: list[np.ndarray], max_faces: int, refine: bool = False) -> list[list[np.ndarray]]:
    """FaceMesh's (468, 3) landmarks per face per image (static mode: every image on its own); with
    ``refine``, ``refine_landmarks=True``'s (478, 3)."""
    import mediapipe as mp

    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=refine, max_num_faces=max_faces,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for img in images:
            res = mesh.process(img)
            faces = res.multi_face_landmarks or []
            out.append([np.array([[p.x, p.y, p.z] for p in f.landmark], np.float64) for f in faces])
    return out


def pair(ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairing by the distance between landmark centroids."""
    cand = sorted((float(np.linalg.norm(a[:, :2].mean(0) - b[:, :2].mean(0))), i, j)
                  for i, a in enumerate(ours) for j, b in enumerate(theirs))
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for _, i, j in cand:
        if i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return pairs


def compare(ours: list[list[np.ndarray]], theirs: list[list[np.ndarray]], names: list[str]) -> dict[str, Any]:
    xy = z = 0.0
    mismatched = []
    worst = ""
    diffs = []  # per face pair: the worst x/y difference
    shapes = set()
    for name, a, b in zip(names, ours, theirs, strict=True):
        if len(a) != len(b):
            mismatched.append(f"{name}: {len(a)} vs {len(b)}")
        for i, j in pair(a, b):
            shapes.add((a[i].shape, b[j].shape))
            d = np.abs(a[i] - b[j])
            diffs.append(float(d[:, :2].max()))
            if d[:, :2].max() > xy:
                xy, worst = float(d[:, :2].max()), name
            z = max(z, float(d[:, 2].max()))
    same_shape = all(sa == sb for sa, sb in shapes)
    return {"images": len(names), "faces": sum(map(len, ours)), "mediapipe_faces": sum(map(len, theirs)),
            "landmarks_per_face": sorted({sa[0] for sa, _ in shapes}), "same_landmark_count": same_shape,
            "same_faces": not mismatched, "count_mismatches": mismatched, "max_xy_diff": xy, "max_z_diff": z,
            "median_face_xy_diff": float(np.median(diffs)) if diffs else 0.0,
            "worst_image": worst, "within_tolerance": not mismatched and same_shape and max(xy, z) <= LANDMARK_TOL}


def iris_vs_attention_mesh(images: list[np.ndarray], max_faces: int, backend: str = "tflite") -> dict[str, Any]:
    """Not parity: MediaPipe's Python package runs no graph with ``iris_landmark.tflite``. Its
    ``FaceMesh(refine_landmarks=True)`` finds irises with another model (the attention mesh,
    landmarks 468 and 473 are its iris centres); this measures how far our iris centres (the iris
    model on our eye crops) are from those, per eye."""
    import mediapipe as mp

    landmarker = load_landmarks(backend=backend, iris=True, max_faces=max_faces)
    diffs = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=max_faces,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for img in images:
            res = mesh.process(img)
            refs = [np.array([[p.x, p.y] for p in f.landmark]) for f in (res.multi_face_landmarks or [])]
            faces = landmarker.process(img)
            for i, j in pair([f.landmarks[:, :2] for f in faces], [r[:468] for r in refs]):
                centres = refs[j][[468, 473]]
                for eye in faces[i].iris.values():
                    diffs.append(float(np.abs(centres - eye.iris[0, :2]).max(1).min()))
    d = np.array(diffs)
    return {"eyes": len(d), "median_centre_diff": float(np.median(d)), "p90_centre_diff": float(np.percentile(d, 90)),
            "max_centre_diff": float(d.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", help="images or folders (default: astronaut + the default selection)")
    ap.add_argument("--max-faces", type=int, default=5, help="max_num_faces for both (default: 5)")
    ap.add_argument("--backends", nargs="+", default=["torch", "tflite"], choices=["torch", "tflite", "onnx"],
                    help="onnx: short_range and face_landmark exported to a temporary folder first; tflite with "
                    "--refine: the attention mesh re-exported to builtin ops first (LiteRT cannot run Google's file)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--iris", action="store_true", help="also: our iris centres against FaceMesh(refine_landmarks=True)'s "
                    "(another model; not a parity check)")
    ap.add_argument("--refine", action="store_true", help="the attention mesh: load_landmarks(refine=True) against "
                    "FaceMesh(refine_landmarks=True), 478 landmarks")
    args = ap.parse_args(argv)
    import skimage.data

    if args.images:
        paths = list_images(args.images)
        names, images = [str(p) for p in paths], [read_image(p) for p in paths]
    else:
        paths = default_images()
        names = ["skimage astronaut", *(str(p.relative_to(DATA)) for p in paths)]
        images = [skimage.data.astronaut(), *(read_image(p) for p in paths)]
    t0 = time.perf_counter()
    theirs = mediapipe_landmarks(images, args.max_faces, args.refine)
    report: dict[str, Any] = {"max_faces": args.max_faces, "refine": args.refine,
                              "mediapipe_seconds": round(time.perf_counter() - t0, 2)}
    mesh_name = "face_landmark_with_attention" if args.refine else "face_landmark"
    tmp = tempfile.TemporaryDirectory(prefix="blazeport-parity-")
    for backend in args.backends:
        if backend == "tflite" and args.refine:  # LiteRT cannot run Google's attention mesh: its verified re-export
            from blazeport.export import export

            path = Path(tmp.name) / f"{mesh_name}.tflite"
            export(mesh_name, "tflite", path)
            lm = load_landmarks(path, backend="tflite", max_faces=args.max_faces, refine=True)
        elif backend == "onnx":  # exported (and verified) here: the onnx backend runs files
            from blazeport.export import export

            files = {name: Path(tmp.name) / f"{name}.onnx" for name in ("short_range", mesh_name)}
            for name, path in files.items():
                export(name, "onnx", path)
            lm = load_landmarks(files[mesh_name], backend="onnx", detector=files["short_range"],
                                max_faces=args.max_faces, refine=args.refine)
        else:
            lm = load_landmarks(backend=backend, max_faces=args.max_faces, refine=args.refine)
        t0 = time.perf_counter()
        ours = [[f.landmarks.astype(np.float64) for f in lm.process(img)] for img in images]
        report[backend] = {**compare(ours, theirs, names), "seconds": round(time.perf_counter() - t0, 2)}
        r = report[backend]
        print(f"{backend:<7} {r['images']} images, faces {r['faces']} / MediaPipe {r['mediapipe_faces']}"
              f"{'' if r['same_faces'] else ' COUNT DIFFERS ' + '; '.join(r['count_mismatches'])}; "
              f"{'/'.join(map(str, r['landmarks_per_face']))} landmarks; worst x/y {r['max_xy_diff']:.2e} "
              f"({r['worst_image']}), median face {r['median_face_xy_diff']:.2e}, z {r['max_z_diff']:.2e}")
    if args.iris:
        r = report["iris_vs_attention_mesh"] = iris_vs_attention_mesh(images, args.max_faces)
        print(f"iris    {r['eyes']} eyes: centre vs FaceMesh(refine_landmarks=True) median {r['median_centre_diff']:.2e}, "
              f"90th percentile {r['p90_centre_diff']:.2e}, max {r['max_centre_diff']:.2e} (another model: not gated)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    ok = all(report[b]["within_tolerance"] for b in args.backends)
    print(f"{'OK' if ok else 'FAILED'}: same faces and every landmark (x, y and z) within {LANDMARK_TOL:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
