"""MediaPipe's palm and pose detectors: specs, not code (issue 12).

Each is a spec (blazeport/specs/) over the generic graph converter: the conversion gate against
LiteRT on real photos of people with hands and bodies; the committed weights equal a fresh
conversion; ``detect`` draws every keypoint; ONNX export verifies; and parity with MediaPipe's own
pipeline (the palm detections ``mp.solutions.hands`` computes inside its graph, the pose detection of
``mp.solutions.pose``) within score 1e-3 and coordinates 2e-3, same count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from blazeport import load
from blazeport.convert import convert
from blazeport.errors import BlazeportError
from blazeport.pipeline.draw import KEYPOINT_COLOURS, draw_detections
from blazeport.pipeline.preprocess import read_image
from blazeport.specs import ModelSpec, spec_named
from tests.conftest import WEIGHTS

MODELS = ["pose_detection", "palm_detection_lite", "palm_detection_full"]
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
    report = convert(WEIGHTS / spec_named(name).tflite, out, images=[rgb for _, rgb in photos])
    assert report["ok"], report
    assert report["spec"] == name
    assert report["detections"]["faces"] >= 4, "the photos should give the gate detections to compare"
    assert max(report["decoded_diff"].values()) < 1e-5
    assert out.read_bytes() == (WEIGHTS / f"{name}.safetensors").read_bytes(), "committed weights are stale"


def test_specs_carry_mediapipe_graph_values() -> None:
    pose, lite, full = (spec_named(n) for n in MODELS)
    assert (pose.input_size, pose.num_anchors, pose.num_keypoints, pose.normalization) == (224, 2254, 4, (-1.0, 1.0))
    assert (lite.input_size, lite.num_anchors, lite.num_keypoints, lite.normalization) == (192, 2016, 7, (0.0, 1.0))
    assert full.anchors == lite.anchors and full.tflite != lite.tflite
    for spec in (pose, lite, full):
        assert spec.score_threshold == 0.5 and spec.nms.algorithm == "weighted"
        assert spec.nms.min_suppression_threshold == 0.3
        assert len(spec.keypoint_names) == spec.num_keypoints
    assert lite.keypoint_names[0] == "wrist" and lite.keypoint_names[2] == "middle_finger_mcp"
    assert pose.keypoint_names[0] == "hip_center" and pose.keypoint_names[2] == "shoulder_center"


def test_spec_keypoint_names_are_checked() -> None:
    palm = spec_named("palm_detection_lite")
    with pytest.raises(BlazeportError, match="keypoint_names has 6 names for num_keypoints 7"):
        dataclasses.replace(palm, keypoint_names=palm.keypoint_names[:6])
    assert ModelSpec.from_dict(palm.to_dict()) == palm  # as stored in files: lists become tuples again
    face = spec_named("short_range").to_dict()  # face files keep their bytes and open in older blazeports
    assert not {"keypoint_names", "subject", "mediapipe_solution", "mediapipe_model_complexity"} & set(face)
    assert ModelSpec.from_dict(face) == spec_named("short_range")
    with pytest.raises(BlazeportError, match="mediapipe_model_complexity"):
        dataclasses.replace(palm, mediapipe_model_complexity=-1)


def test_detect_draws_every_palm_keypoint(photos, tmp_path: Path, capsys) -> None:
    from blazeport.cli import main

    name, rgb = photos[0]
    faces = load("palm_detection_lite").detect(rgb)
    assert len(faces) == 2 and all(len(f.keypoints) == 7 for f in faces)
    drawn = draw_detections(rgb, faces)
    h, w = rgb.shape[:2]
    for f in faces:
        for k, (x, y) in enumerate(f.keypoints[5:], start=5):  # the thumb's: drawn last, on top
            assert tuple(drawn[round(y * h), round(x * w)]) == KEYPOINT_COLOURS[k], k
    folder = WEIGHTS.parent.parent / "shared" / "data" / "unlabeled" / "human_samples"
    assert main(["detect", str(folder / name), "--model", "palm_detection_lite", "--out", str(tmp_path)]) == 0
    assert "2 palm(s)" in capsys.readouterr().out
    assert (tmp_path / name).is_file()


def test_palm_exports_to_onnx_with_prelu(tmp_path: Path, photos) -> None:
    pytest.importorskip("onnxruntime")
    from blazeport.export import export
    from blazeport.export.to_onnx import onnx_op_counts

    out = tmp_path / "palm.onnx"
    report = export("palm_detection_lite", "onnx", out, images=[rgb for _, rgb in photos[:2]])
    assert report["ok"], report
    assert onnx_op_counts(out).get("PRelu") == 26
    faces = load(out).detect(photos[0][1])
    assert len(faces) == 2


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
