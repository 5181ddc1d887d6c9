"""MediaPipe's palm and pose detectors: specs, not code (issue 12).

Each is a spec (blazeport/specs.py) over the generic graph converter: the conversion gate against
LiteRT on real photos of people with hands and bodies; the committed weights equal a fresh
conversion; ``detect`` draws every keypoint; ONNX export verifies; and parity with MediaPipe's own
pipeline (the palm detections ``mp.solutions.hands`` computes inside its graph, the pose detection of
``mp.solutions.pose``) within score 1e-3 and coordinates 2e-3, same count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blazeport import load
from blazeport.convert import convert
from blazeport.preprocess import read_image
from blazeport.specs import get_spec
from tests.conftest import WEIGHTS

MODELS = ["pose_detection"]
# photos with hands and whole or upper bodies (MediaPipe finds palms and a pose in each)
PHOTOS = ["person-celeste.jpg", "person-lauren.jpg", "group-4.jpg", "stock-models-4.jpg", "stock-group-1.jpg"]
SCORE_TOL, COORD_TOL = 1e-3, 2e-3


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[tuple[str, np.ndarray]]:
    folder = shared_data / "unlabeled" / "human_samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return [(name, read_image(folder / name)) for name in PHOTOS]


@pytest.mark.parametrize("name", MODELS)
def test_converts_and_verifies_on_photos_of_people(name: str, photos, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.safetensors"
    report = convert(WEIGHTS / get_spec(name).tflite, out, images=[rgb for _, rgb in photos])
    assert report["ok"], report
    assert report["spec"] == name
    assert report["detections"]["faces"] >= 4, "the photos should give the gate detections to compare"
    assert max(report["decoded_diff"].values()) < 1e-5
    assert out.read_bytes() == (WEIGHTS / f"{name}.safetensors").read_bytes(), "committed weights are stale"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_detections_match_mediapipe(name: str, photos) -> None:
    pytest.importorskip("mediapipe", reason="MediaPipe is the oracle here; install the extra: pip install -e '.[parity]'")
    from tools.parity_report import blazeport_faces, compare, keep_first, mediapipe_faces, mediapipe_oracle

    detectors = {b: load(name, backend=b) for b in ("torch", "tflite")}
    with mediapipe_oracle(name) as oracle:
        theirs = [mediapipe_faces(oracle, rgb) for _, rgb in photos]
    assert sum(map(len, theirs)) >= len(photos), "MediaPipe should find something in these photos"
    for backend, detector in detectors.items():
        for (image, rgb), mp_faces in zip(photos, theirs, strict=True):
            r = compare(image, keep_first(blazeport_faces(detector, rgb), name), mp_faces)
            assert r.within(SCORE_TOL, COORD_TOL), (backend, image, r)
