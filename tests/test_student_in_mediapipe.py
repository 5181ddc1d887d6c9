"""A student is a drop-in for Google's file: the shipped ``short_range_resnet.tflite`` put in MediaPipe's place in
``FaceDetection(model_selection=0)`` (graph surgery: ``examples/student_in_mediapipe.py``, the guide's code) gives the
detections blazeport gives for the same student, on real photos: the same faces, scores within 0.01, boxes and
keypoints within 0.005 (normalized), as the parity test asks of Google's own files.

Needs the optional ``parity`` extra (mediapipe); skipped without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mp = pytest.importorskip(
    "mediapipe", reason="MediaPipe is the oracle here; install the optional extra: pip install -e '.[parity]'"
)

from blazeport import load  # noqa: E402
from blazeport.pipeline.preprocess import read_image  # noqa: E402
from blazeport.specs import WEIGHTS_DIR  # noqa: E402
from examples.student_in_mediapipe import face_detection_with_model  # noqa: E402
from tools.parity_report import COORD_TOL, SCORE_TOL, blazeport_faces, compare, default_images, mediapipe_faces  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # protobuf 4 vs MediaPipe

STUDENT_TFLITE = WEIGHTS_DIR / "short_range_resnet.tflite"


@pytest.fixture(scope="module")
def pictures(shared_data: Path, astronaut: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """astronaut, the 12 faces-boxed photos and 2 photos of each of 5 unlabeled folders."""
    return [("astronaut", astronaut)] + [(p.name, read_image(p)) for p in default_images(shared_data, per_folder=2)]


@pytest.fixture(scope="module")
def in_mediapipe(pictures: list[tuple[str, np.ndarray]]) -> list[list]:
    assert STUDENT_TFLITE.is_file()
    with face_detection_with_model(STUDENT_TFLITE, model_selection=0) as fd:
        return [mediapipe_faces(fd, rgb) for _, rgb in pictures]


@pytest.mark.parametrize(("model", "backend"), [(str(STUDENT_TFLITE), "tflite"), ("short_range_resnet", "torch")])
def test_mediapipe_running_the_student_finds_what_blazeport_finds(model: str, backend: str,
                                                                  pictures: list[tuple[str, np.ndarray]],
                                                                  in_mediapipe: list[list]) -> None:
    detector = load(model, backend=backend)
    results = [compare(name, blazeport_faces(detector, rgb), theirs)
               for (name, rgb), theirs in zip(pictures, in_mediapipe, strict=True)]
    assert sum(r.mediapipe for r in results) >= 15, "too few faces for the comparison to mean much"
    bad = [f"{r.image}: {r.ours} vs {r.mediapipe} faces, score {r.worst_score:.1e}, coords {r.worst_coord:.1e}"
           for r in results if not r.within(SCORE_TOL, COORD_TOL)]
    assert not bad, "\n".join(bad)


def test_the_file_mediapipe_ran_was_the_students(pictures: list[tuple[str, np.ndarray]], in_mediapipe: list[list]) -> None:
    """Not Google's: the stock graph's scores differ from the swapped one's on these photos."""
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
        stock = [mediapipe_faces(fd, rgb) for _, rgb in pictures]
    differ = sum(len(a) != len(b) or any(abs(x.score - y.score) > 1e-3 for x, y in zip(a, b, strict=True))
                 for a, b in zip(stock, in_mediapipe, strict=True))
    assert differ >= len(pictures) // 2


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such model file"):
        face_detection_with_model(tmp_path / "student.tflite")
