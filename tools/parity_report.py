#!/usr/bin/env python
"""End-to-end parity of blazeport's detector with MediaPipe's own pipeline, on real photos.

For every image, ``blazeport.load(model, backend).detect(rgb)`` runs for the torch and the tflite
backends and MediaPipe 0.10.14 runs as the oracle (``pip install -e ".[parity]"``): for a face model
``mp.solutions.face_detection.FaceDetection(model_selection=..., min_detection_confidence=0.5)
.process(rgb)``; for a detector that MediaPipe runs inside a larger solution (the spec's
``mediapipe_solution``: palm detection in ``hands``, pose detection in ``pose``), that solution's graph
with its detector's own output stream requested (:data:`SOLUTION_STREAMS`). Detections are
paired greedily by IoU; the table gives, per backend, the images, detections (ours / MediaPipe), images
whose counts differ, the worst score difference and the worst coordinate difference (box xmin, ymin,
width, height and the keypoints, normalized), and whether that is within the tolerances (score 0.01,
coordinates 0.005, same counts). Exit status 1 when a backend is outside them.

Usage::

    python tools/parity_report.py                        # faces-boxed + a fixed unlabeled selection
    python tools/parity_report.py PHOTO.jpg FOLDER ...   # given images and folders (recursively)
    python tools/parity_report.py --per-folder 20 --json parity.json
    python tools/parity_report.py --model full_range_sparse
    python tools/parity_report.py --model palm_detection_lite ../shared/data/unlabeled/human_samples

``tests/test_parity_mediapipe.py`` uses :func:`default_images` and :func:`compare` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.modelfiles.verify import pair_detections
from blazeport.specs import SPECS

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
UNLABELED_FOLDERS = ("human_samples", "deepface_tests", "caltech1999_half", "wider_416", "pyfeat_video_frames")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# blazeport spec -> the FaceDetection(model_selection=...) that runs the same file
MODEL_SELECTION = {s.name: s.mediapipe_model_selection for s in SPECS.values() if s.mediapipe_model_selection is not None}
# ModelSpec.mediapipe_solution -> (its graph in the mediapipe package, the stream with the detector's own
# detections (after NMS and letterbox removal), the side inputs of a static-image run, the calculator that
# holds the score threshold). hands clips its palm detections to num_hands: 100 leaves them all; pose
# returns the first of its detections only (SplitDetectionVectorCalculator), so one at most is compared.
SOLUTION_STREAMS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "hands": ("mediapipe/modules/hand_landmark/hand_landmark_tracking_cpu.binarypb", "palm_detections",
              {"num_hands": 100, "use_prev_landmarks": False},
              "palmdetectioncpu__TensorsToDetectionsCalculator.min_score_thresh"),
    "pose": ("mediapipe/modules/pose_landmark/pose_landmark_cpu.binarypb", "pose_detection",
             {"model_complexity": 1, "smooth_landmarks": False, "enable_segmentation": False,
              "smooth_segmentation": False, "use_prev_landmarks": False},
             "posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh"),
}
# every spec with a MediaPipe oracle
PARITY_MODELS = sorted([*MODEL_SELECTION, *(s.name for s in SPECS.values() if s.mediapipe_solution in SOLUTION_STREAMS)])
BACKENDS = ("torch", "tflite")
SCORE_TOL = 0.01
COORD_TOL = 0.005


@dataclass
class Face:
    """One detection in MediaPipe's terms: score, (xmin, ymin, width, height) and keypoints, normalized."""

    score: float
    box: np.ndarray  # (4,)
    keypoints: np.ndarray  # (K, 2)


@dataclass
class ImageResult:
    """One image, one backend: counts and the differences of the paired detections."""

    image: str
    ours: int
    mediapipe: int
    score_diffs: list[float] = field(default_factory=list)  # per pair
    coord_diffs: list[float] = field(default_factory=list)  # per pair: max over box and keypoints

    @property
    def count_mismatch(self) -> bool:
        return self.ours != self.mediapipe

    @property
    def worst_score(self) -> float:
        return max(self.score_diffs, default=0.0)

    @property
    def worst_coord(self) -> float:
        return max(self.coord_diffs, default=0.0)

    def within(self, score_tol: float = SCORE_TOL, coord_tol: float = COORD_TOL) -> bool:
        return not self.count_mismatch and self.worst_score <= score_tol and self.worst_coord <= coord_tol


def default_images(data: Path = SHARED_DATA, per_folder: int = 3) -> list[Path]:
    """The 12 faces-boxed photos plus ``per_folder`` evenly spaced photos of each unlabeled folder (sorted)."""
    images = sorted((data / "faces-boxed" / "images").glob("*.jpg"))
    for name in UNLABELED_FOLDERS:
        files = sorted(p for p in (data / "unlabeled" / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files and per_folder > 0:
            images += files[:: max(1, len(files) // per_folder)][:per_folder]
    return images


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)
    return out


def _faces(detections: Any) -> list[Face]:
    faces = []
    for d in detections:
        box = d.location_data.relative_bounding_box
        kps = [(k.x, k.y) for k in d.location_data.relative_keypoints]
        faces.append(Face(float(d.score[0]), np.array([box.xmin, box.ymin, box.width, box.height]), np.array(kps)))
    return faces


def mediapipe_faces(face_detection: Any, rgb: np.ndarray) -> list[Face]:
    """Run a ``mp.solutions.face_detection.FaceDetection`` (or :func:`mediapipe_oracle`) on an RGB uint8 image."""
    if isinstance(face_detection, SolutionOracle):
        return face_detection.detections(rgb)
    return _faces(face_detection.process(np.ascontiguousarray(rgb)).detections or [])


class SolutionOracle:
    """A MediaPipe solution graph with its detector's stream requested (:data:`SOLUTION_STREAMS`)."""

    def __init__(self, solution: str, model_complexity: int | None, min_score: float):
        from mediapipe.python import solution_base

        graph, self.stream, side_inputs, threshold = SOLUTION_STREAMS[solution]
        if model_complexity is not None:
            side_inputs = {**side_inputs, "model_complexity": model_complexity}
        self.graph = solution_base.SolutionBase(binary_graph_path=graph, side_inputs=side_inputs,
                                                calculator_params={threshold: min_score}, outputs=[self.stream])

    def detections(self, rgb: np.ndarray) -> list[Face]:
        found = getattr(self.graph.process(np.ascontiguousarray(rgb)), self.stream)
        return _faces([] if found is None else found if isinstance(found, list) else [found])

    def __enter__(self) -> SolutionOracle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.graph.close()


def mediapipe_oracle(model: str) -> Any:
    """MediaPipe's own pipeline for the file of spec ``model`` (a context manager; see :func:`mediapipe_faces`)."""
    import mediapipe as mp

    spec = SPECS[model]
    if spec.mediapipe_model_selection is not None:
        return mp.solutions.face_detection.FaceDetection(model_selection=spec.mediapipe_model_selection,
                                                         min_detection_confidence=0.5)
    return SolutionOracle(spec.mediapipe_solution, spec.mediapipe_model_complexity, spec.score_threshold)


def keep_first(faces: list[Face], model: str) -> list[Face]:
    """What the oracle reports of our detections: the first only where its solution keeps one (pose)."""
    return faces[:1] if SPECS[model].mediapipe_solution == "pose" else faces


def blazeport_faces(detector: Any, rgb: np.ndarray) -> list[Face]:
    """Run a :class:`blazeport.pipeline.detector.Detector` on an RGB uint8 image."""
    return [Face(d.score, np.array(d.box), np.array(d.keypoints)) for d in detector.detect(rgb)]


def compare(name: str, ours: Sequence[Face], theirs: Sequence[Face]) -> ImageResult:
    """Pair the detections and measure the differences."""
    result = ImageResult(name, len(ours), len(theirs))
    for i, j in pair_detections(ours, theirs):
        a, b = ours[i], theirs[j]
        result.score_diffs.append(abs(a.score - b.score))
        coords = np.concatenate([np.abs(a.box - b.box), np.abs(a.keypoints - b.keypoints).ravel()])
        result.coord_diffs.append(float(coords.max()))
    return result


def summarize(results: Sequence[ImageResult], score_tol: float = SCORE_TOL, coord_tol: float = COORD_TOL) -> dict[str, Any]:
    """The figures of one backend over all its images."""
    worst_s = max(results, key=lambda r: r.worst_score, default=None)
    worst_c = max(results, key=lambda r: r.worst_coord, default=None)
    return {
        "images": len(results),
        "detections_ours": sum(r.ours for r in results),
        "detections_mediapipe": sum(r.mediapipe for r in results),
        "count_mismatches": [r.image for r in results if r.count_mismatch],
        "worst_score_diff": worst_s.worst_score if worst_s else 0.0,
        "worst_score_image": worst_s.image if worst_s else None,
        "worst_coord_diff": worst_c.worst_coord if worst_c else 0.0,
        "worst_coord_image": worst_c.image if worst_c else None,
        "within_tolerance": all(r.within(score_tol, coord_tol) for r in results),
    }


def run(images: Sequence[Path], model: str = "short_range", backends: Sequence[str] = BACKENDS,
        threads: int | None = None) -> dict[str, list[ImageResult]]:
    """Compare every image on every backend; MediaPipe runs once per image."""
    import blazeport
    from blazeport.pipeline.preprocess import read_image

    detectors = {b: blazeport.load(model, backend=b, threads=threads) for b in backends}
    results: dict[str, list[ImageResult]] = {b: [] for b in backends}
    with mediapipe_oracle(model) as oracle:  # stateless between images: one instance serves them all
        for path in images:
            rgb = read_image(path)
            theirs = mediapipe_faces(oracle, rgb)
            for backend, detector in detectors.items():
                ours = keep_first(blazeport_faces(detector, rgb), model)
                results[backend].append(compare(str(path), ours, theirs))
    return results


def table(summaries: dict[str, dict[str, Any]]) -> str:
    header = f"{'backend':<8} {'images':>6} {'dets ours/MP':>13} {'count diff':>10} {'worst score':>12} {'worst coord':>12}  ok"
    lines = [header, "-" * len(header)]
    for backend, s in summaries.items():
        dets = f"{s['detections_ours']}/{s['detections_mediapipe']}"
        lines.append(
            f"{backend:<8} {s['images']:>6} {dets:>13} {len(s['count_mismatches']):>10} "
            f"{s['worst_score_diff']:>12.2e} {s['worst_coord_diff']:>12.2e}  {'yes' if s['within_tolerance'] else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="images or folders (default: faces-boxed + unlabeled selection)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="shared data folder for the default selection")
    parser.add_argument("--per-folder", type=int, default=3, help="photos per unlabeled folder in the default selection")
    parser.add_argument("--model", choices=PARITY_MODELS, default="short_range")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures and every image's differences here")
    parser.add_argument("--score-tol", type=float, default=SCORE_TOL, help="score tolerance (default %(default)s)")
    parser.add_argument("--coord-tol", type=float, default=COORD_TOL, help="coordinate tolerance (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the images outside the tolerances")
    args = parser.parse_args(argv)

    images = expand(args.paths) if args.paths else default_images(args.data, args.per_folder)
    if not images:
        parser.error(f"no images (given paths empty, or {args.data} missing)")
    start = time.perf_counter()
    results = run(images, args.model, args.backends, args.threads)
    summaries = {b: summarize(r, args.score_tol, args.coord_tol) for b, r in results.items()}
    print(f"{args.model}: {len(images)} images vs MediaPipe, tolerances score {args.score_tol}, coordinates {args.coord_tol} "
          f"({time.perf_counter() - start:.1f} s)")
    print(table(summaries))
    for backend, s in summaries.items():
        print(f"{backend}: worst score diff in {s['worst_score_image']}, worst coordinate diff in {s['worst_coord_image']}")
        if args.verbose:
            for r in results[backend]:
                if not r.within(args.score_tol, args.coord_tol):
                    print(f"  {r.image}: {r.ours} vs {r.mediapipe} detections, score {r.worst_score:.2e}, "
                          f"coordinates {r.worst_coord:.2e}")
    if args.json:
        report = {
            "model": args.model,
            "tolerances": {"score": args.score_tol, "coordinates": args.coord_tol},
            "summary": summaries,
            "images": {b: [asdict(r) for r in rs] for b, rs in results.items()},
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if all(s["within_tolerance"] for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
