"""End to end against MediaPipe itself: ``blazeport.load(NAME).detect`` vs MediaPipe's
``FaceDetection(model_selection=...)`` on real photos, for the torch and the tflite backends: short
range (model_selection=0) and full range, which MediaPipe runs from the sparse file
(model_selection=1, score threshold 0.6).

Same number of detections; per pair (greedy IoU) score within 0.01 and box and keypoints within
0.005, normalized. In practice the two agree to ~1e-6: the letterbox reproduces the fixed-point
``warpPerspective`` MediaPipe links (see ``blazeport.pipeline.preprocess``); with OpenCV 5's own warp the
scores were up to 0.013 apart and one borderline face (0.503) went missing.

Needs the optional ``parity`` extra (``pip install -e ".[parity]"``); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mp = pytest.importorskip(
    "mediapipe", reason="MediaPipe is the oracle here; install the optional extra: pip install -e '.[parity]'"
)

from blazeport import load  # noqa: E402
from blazeport.modelfiles.verify import pair_detections  # noqa: E402
from blazeport.pipeline.preprocess import read_image  # noqa: E402
from tools.parity_report import (  # noqa: E402
    COORD_TOL,
    MODEL_SELECTION,
    SCORE_TOL,
    Face,
    ImageResult,
    blazeport_faces,
    compare,
    default_images,
    mediapipe_faces,
)

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # protobuf 4 vs MediaPipe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray]]:
    """astronaut plus the 12 faces-boxed photos and 3 evenly spaced photos of 5 unlabeled folders."""
    import skimage.data

    if not DATA.is_dir():
        pytest.skip(f"real photos not found at {DATA} (the shared data folder beside the checkout)")
    images = [("skimage astronaut", skimage.data.astronaut())]
    images += [(str(p.relative_to(DATA)), read_image(p)) for p in default_images(DATA, per_folder=3)]
    return images


@pytest.fixture(scope="module")
def mediapipe_results(photos: list[tuple[str, np.ndarray]]) -> dict[str, list[list[Face]]]:
    """MediaPipe's detections per model, one FaceDetection for all photos (it keeps no state between images)."""
    out = {}
    for model, selection in MODEL_SELECTION.items():
        with mp.solutions.face_detection.FaceDetection(model_selection=selection, min_detection_confidence=0.5) as fd:
            out[model] = [mediapipe_faces(fd, rgb) for _, rgb in photos]
    return out


def _report(results: list[ImageResult], backend: str) -> str:
    """The worst images first: counts, worst score and coordinate differences."""
    bad = sorted(results, key=lambda r: (r.count_mismatch, r.worst_score / SCORE_TOL, r.worst_coord / COORD_TOL),
                 reverse=True)
    lines = [f"{backend} vs MediaPipe (tolerances: score {SCORE_TOL}, coordinates {COORD_TOL}, same counts):"]
    lines += [f"  {r.image}: {r.ours} vs {r.mediapipe} detections, worst score diff {r.worst_score:.2e}, "
              f"worst coordinate diff {r.worst_coord:.2e}" for r in bad[:8]]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODEL_SELECTION))
@pytest.mark.parametrize("backend", ["torch", "tflite"])
def test_detect_matches_mediapipe_on_real_photos(
    backend: str, model: str, photos: list[tuple[str, np.ndarray]], mediapipe_results: dict[str, list[list[Face]]]
) -> None:
    detector = load(model, backend=backend)
    results = [compare(name, blazeport_faces(detector, rgb), theirs)
               for (name, rgb), theirs in zip(photos, mediapipe_results[model], strict=True)]
    assert sum(r.mediapipe for r in results) >= 25, "too few faces for the comparison to mean much"
    assert all(r.within() for r in results), _report(results, backend)


def test_pairing_is_greedy_by_iou() -> None:
    def face(x: float, score: float = 0.9) -> Face:
        return Face(score, np.array([x, 0.1, 0.2, 0.2]), np.zeros((6, 2)))

    ours = [face(0.0), face(0.5), face(0.9)]
    theirs = [face(0.52), face(0.01)]
    assert sorted(pair_detections(ours, theirs)) == [(0, 1), (1, 0)]  # face(0.9) overlaps nothing: unpaired
    result = compare("x", ours, theirs)
    assert result.count_mismatch and not result.within()
    assert result.worst_coord == pytest.approx(0.02) and result.worst_score == 0.0
