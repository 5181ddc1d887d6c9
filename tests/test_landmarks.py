"""Face landmarks and iris: ROI geometry (MediaPipe's calculators), the eye crop, conversion against
LiteRT on real photos and face crops, and the ``blazeport landmarks`` command."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.cli import main
from blazeport.convert import ConversionError, convert
from blazeport.modelfiles.loader import open_module
from blazeport.modelfiles.verify import verify_landmarks
from blazeport.pipeline.landmarks import EYES, FaceLandmarker, _landmarks, _remove_padding, crop_eye, eye_roi, load_landmarks
from blazeport.pipeline.photos import sample_image_path, sample_images
from blazeport.pipeline.roi import (
    Rect,
    associate,
    detection_to_rect,
    normalize_radians,
    project_landmarks,
    rect_transform,
    roi_from_detection,
    transform_rect,
    warp_rect,
)
from blazeport.specs import LANDMARK_SPECS, WEIGHTS_DIR, spec_named


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    """The whole pipeline on LiteRT (quick to load), with iris."""
    return load_landmarks(backend="tflite", iris=True, max_faces=None)


# ---------------------------------------------------------------------------------------------
# ROI geometry


def test_rotation_is_measured_in_pixels_from_keypoint_0_to_1() -> None:
    # eyes level: no rotation; the right-hand eye 10 px higher over 40 px on a 200x100 image: -atan2(10, 40)
    level = detection_to_rect((0.2, 0.2, 0.4, 0.4), [(0.3, 0.5), (0.5, 0.5)], 200, 100)
    assert level.rotation == 0.0
    assert (level.x_center, level.y_center, level.width, level.height) == pytest.approx((0.4, 0.4, 0.4, 0.4))
    tilted = detection_to_rect((0.2, 0.2, 0.4, 0.4), [(0.3, 0.5), (0.5, 0.4)], 200, 100)
    assert tilted.rotation == pytest.approx(-math.atan2(10, 40))
    # keypoint 1 left of keypoint 0 (an upside-down face): half a turn, kept in [-pi, pi)
    flipped = detection_to_rect((0.2, 0.2, 0.4, 0.4), [(0.5, 0.5), (0.3, 0.5)], 200, 100)
    assert flipped.rotation == pytest.approx(-math.pi)
    assert normalize_radians(3 * math.pi / 2) == pytest.approx(-math.pi / 2)


def test_rect_is_squared_on_its_long_side_in_pixels_then_scaled() -> None:
    # 0.2 x 0.3 of a 200x100 image is 40 x 30 px: squared to 40 x 40 px = 0.2 x 0.4, then x1.5
    r = transform_rect(Rect(0.5, 0.5, 0.2, 0.3, 0.1), 200, 100, 1.5, 1.5, square_long=True)
    assert (r.x_center, r.y_center, r.width, r.height, r.rotation) == pytest.approx((0.5, 0.5, 0.3, 0.6, 0.1))
    face = roi_from_detection((0.1, 0.1, 0.2, 0.3), [(0.15, 0.2), (0.25, 0.2)], 200, 100)
    assert (face.width * 200, face.height * 100) == pytest.approx((60, 60))


def test_projection_inverts_the_warp() -> None:
    """A point at crop coordinates (u, v), projected onto the image and sent through the warp's
    matrix, lands at (u, v) x 192: the crop and the way back agree on rotation and scale."""
    w, h = 640, 480
    for rotation in (0.0, 0.4, -2.5):
        rect = Rect(0.45, 0.55, 0.3, 0.4, rotation)
        uv = np.array([[0.2, 0.3, 0.0], [0.5, 0.5, 0.1], [0.9, 0.1, -0.2]], np.float32)
        img = project_landmarks(uv, rect) * np.array([w, h, 1], np.float32)
        m = rect_transform(rect, w, h, 192, 192)
        mapped = cv2.perspectiveTransform(img[None, :, :2].astype(np.float64), m)[0]
        np.testing.assert_allclose(mapped, uv[:, :2] * 192, atol=2e-3)
        assert project_landmarks(uv, rect)[:, 2] == pytest.approx(uv[:, 2] * rect.width)  # z scaled like x


def test_warp_rotates_and_replicates_the_border() -> None:
    """A quarter-turned rect turns a left-to-right ramp into a vertical one; outside the image the
    edge pixels are repeated (BORDER_REPLICATE), not black."""
    ramp = np.repeat(np.linspace(0, 250, 100).astype(np.uint8)[None, :, None], 100, 0).repeat(3, 2)
    t = warp_rect(ramp, Rect(0.5, 0.5, 0.5, 0.5, math.pi / 2), 50, (0.0, 1.0))
    assert np.ptp(t[:, 25, 0]) > 0.4 and np.ptp(t[25, :, 0]) < 0.02
    edge = warp_rect(ramp, Rect(0.0, 0.5, 0.5, 0.5, 0.0), 50, (0.0, 1.0))  # the left half lies outside
    assert edge[:, :10].max() == pytest.approx(0.0) and edge[:, :10].min() == 0.0  # column 0's value, repeated
    bright = warp_rect(ramp, Rect(1.0, 0.5, 0.5, 0.5, 0.0), 50, (0.0, 1.0))
    assert bright[:, -10:].min() == pytest.approx(250 / 255)


def test_association_keeps_the_later_of_two_overlapping_rects() -> None:
    a, b, c = Rect(0.3, 0.3, 0.2, 0.2), Rect(0.31, 0.3, 0.2, 0.2), Rect(0.8, 0.8, 0.1, 0.1)
    assert associate([a, c, b]) == [c, b]  # b replaces a (IoU 0.9) and goes to the end
    assert associate([a, c]) == [a, c]


# ---------------------------------------------------------------------------------------------
# Iris crop


def test_eye_crop_takes_the_pixels_of_an_upright_rect_and_mirrors_the_right_eye() -> None:
    img = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    rect = Rect(0.5, 0.5, 0.2, 0.2, 0.0)  # 20 x 20 px around (50, 50): rows and columns 40-59
    tensor, pad = crop_eye(img, rect, size=20)
    assert pad == (0.0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(np.round(tensor * 255).astype(np.uint8), img[40:60, 40:60])
    mirrored, _ = crop_eye(img, rect, size=20, flip=True)
    np.testing.assert_array_equal(mirrored, tensor[:, ::-1])
    _, pad = crop_eye(img, Rect(0.5, 0.5, 0.2, 0.1, 0.0), size=20)  # 20 x 10 px fitted: a quarter above and below
    assert pad == pytest.approx((0.0, 0.25, 0.0, 0.25))


def test_iris_outputs_are_unmirrored_unpadded_and_projected() -> None:
    raw = np.array([16.0, 32.0, 8.0], np.float32)  # x, y, z in 64-px crop units
    assert _landmarks(raw, 1, 64, flip=True)[0] == pytest.approx((0.75, 0.5, 0.125))
    assert _remove_padding(np.array([[0.5, 0.25, 0.1]], np.float32), (0.0, 0.25, 0.0, 0.25))[0] == pytest.approx(
        (0.5, 0.0, 0.1))
    lm = np.zeros((468, 3), np.float32)
    lm[33], lm[133] = (0.4, 0.5, 0), (0.5, 0.5, 0)
    roi = eye_roi(lm, "left", 200, 100)  # 20 px apart: a 46 px square around their midpoint
    assert (roi.x_center, roi.y_center, roi.rotation) == pytest.approx((0.45, 0.5, 0.0))
    assert (roi.width * 200, roi.height * 100) == pytest.approx((46, 46))
    assert EYES["right"][2] and not EYES["left"][2]


# ---------------------------------------------------------------------------------------------
# Conversion against LiteRT


def _face_crops(landmarker: FaceLandmarker, spec_name: str) -> list[np.ndarray]:
    """Model inputs the pipeline makes from real photos: face crops (192) or eye crops (64)."""
    crops = []
    for img in sample_images():
        for face in landmarker.process(img):
            if LANDMARK_SPECS[spec_name].input_size == 192:  # a face mesh (with or without attention)
                crops.append(warp_rect(img, face.roi, 192, (0.0, 1.0)))
            else:
                h, w = img.shape[:2]
                crops += [crop_eye(img, eye_roi(face.landmarks, eye, w, h), 64, flip)[0] for eye, (_, _, flip) in EYES.items()]
    return crops


@pytest.mark.parametrize("name", sorted(LANDMARK_SPECS))
def test_landmark_model_converts_and_passes_the_gate_on_real_photos(name: str, tmp_path, landmarker) -> None:
    """Against LiteRT; the attention mesh, whose custom ops LiteRT cannot run, against MediaPipe's own inference."""
    spec = LANDMARK_SPECS[name]
    if name == "face_landmark_with_attention":
        pytest.importorskip("mediapipe", reason="the attention mesh's reference is MediaPipe (the parity extra)")
    crops = _face_crops(landmarker, name)
    assert crops, "the sample photos have a face"
    report = convert(WEIGHTS_DIR / spec.tflite, tmp_path / f"{name}.safetensors", crops=crops)
    assert report["ok"] and report["written"] and report["spec"] == name
    assert report["crops"] == len(crops) and report["images"] == 5
    assert set(report["max_abs_diff"]) == {n for n, _ in spec.outputs}
    assert max(report["decoded_diff"].values()) < 1e-4
    assert report["reference"].startswith("MediaPipe" if name == "face_landmark_with_attention" else "LiteRT")
    # the committed file is what a conversion writes
    assert (tmp_path / f"{name}.safetensors").read_bytes() == (WEIGHTS_DIR / f"{name}.safetensors").read_bytes()


def test_landmark_gate_rejects_a_wrong_prelu_slope() -> None:
    import torch

    from blazeport.modelfiles.backends import TFLiteBackend, TorchBackend

    module, spec, _ = open_module("face_landmark")
    slope = next(p for n, p in module.named_parameters() if "prelu" in n)
    with torch.no_grad():
        slope[3] += 0.05
    check = verify_landmarks(TorchBackend(module, optimize=False).raw, TFLiteBackend(WEIGHTS_DIR / spec.tflite).raw,
                             spec, sample_images()[:2])
    assert not check["passes_gate"]


def test_an_op_blazeport_does_not_translate_is_named(monkeypatch, tmp_path) -> None:
    import blazeport.convert.graph as graph

    monkeypatch.setattr(graph, "GRAPH_OPS", graph.GRAPH_OPS - {"PRELU"})
    with pytest.raises(ConversionError, match=r"face_landmark\.tflite: unsupported TFLite op\(s\) PRELU"):
        convert(WEIGHTS_DIR / "face_landmark.tflite", tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def test_detector_commands_refuse_a_landmark_model_clearly() -> None:
    import blazeport

    with pytest.raises(blazeport.BlazeportError, match="landmark model, not a face detector"):
        blazeport.load("face_landmark", backend="tflite")
    with pytest.raises(blazeport.BlazeportError, match="is a face detector, not a face landmark model"):
        load_landmarks("short_range", backend="tflite")
    assert spec_named("iris_landmark").input_size == 64


def test_a_face_mesh_given_as_the_iris_model_is_refused_in_one_line(capsys) -> None:
    """The iris model was never checked: a face mesh there ended in a reshape traceback on the first face."""
    code = main(["landmarks", str(sample_image_path("astronaut")), "--backend", "tflite", "--iris",
                 "--iris-model", "face_landmark", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "face_landmark is not an iris model" in err and "71 eye contour and 5 iris landmarks" in err
    with pytest.raises(blazeport.BlazeportError, match="is not an iris model"):
        load_landmarks(backend="tflite", iris=WEIGHTS_DIR / "face_landmark.tflite")


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_writes_a_drawing_and_json_with_468x3_landmarks(tmp_path, capsys) -> None:
    out = tmp_path / "drawn"
    code = main(["landmarks", str(sample_image_path("astronaut")), "--backend", "tflite", "--iris", "--out", str(out),
                 "--json", "-q"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    (face,) = results[0]["faces"]
    assert np.array(face["landmarks"]).shape == (468, 3) and face["score"] > 0.9
    assert np.array(face["iris"]["left"]["contour"]).shape == (71, 3)
    assert np.array(face["iris"]["right"]["iris"]).shape == (5, 3)
    lm = np.array(face["landmarks"])
    x, y, w, h = face["detection"]["box"]
    assert x - 0.05 < lm[:, 0].mean() < x + w + 0.05 and y - 0.05 < lm[:, 1].mean() < y + h + 0.05
    (drawn,) = out.iterdir()
    drawing = cv2.imread(str(drawn))
    assert drawing is not None and drawing.shape == (512, 512, 3)
    original = cv2.imread(str(sample_image_path("astronaut")))
    assert (np.abs(drawing.astype(int) - original).sum(2) > 60).mean() > 0.01  # the mesh is drawn


def test_the_summary_names_the_runtimes_that_ran(tmp_path, capsys) -> None:
    """With no --backend a .onnx model runs on onnx (and the default detector on torch): the summary
    named ``torch`` for both, from the unset --backend."""
    from blazeport.export import export

    mesh, detector = tmp_path / "face_landmark.onnx", tmp_path / "short_range.onnx"
    export("face_landmark", "onnx", mesh)
    export("short_range", "onnx", detector)
    photo = str(sample_image_path("astronaut"))
    assert main(["landmarks", photo, "--model", str(mesh), "--json"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"({mesh}, face mesh on onnx, detector on torch)")
    assert main(["landmarks", photo, "--model", str(mesh), "--detector", str(detector), "--json"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"({mesh}, onnx)")
    assert main(["landmarks", photo, "--backend", "tflite", "--iris", "--json"]) == 0
    assert capsys.readouterr().err.strip().endswith("(face_landmark, tflite)")


def test_landmarks_on_litert_need_no_torch() -> None:
    """The landmark pipeline on LiteRT runs where torch is not installed (boards)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import blazeport, skimage.data\n"
            "faces = blazeport.load_landmarks(backend='tflite', iris=True).process(skimage.data.astronaut())\n"
            "assert len(faces) == 1 and faces[0].landmarks.shape == (468, 3) and faces[0].iris['left'].iris.shape == (5, 3)\n"
            "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=WEIGHTS_DIR.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(LANDMARK_SPECS))
def test_bundled_landmark_models_are_the_recorded_originals(name: str) -> None:
    from blazeport.files import sha256_of

    spec = LANDMARK_SPECS[name]
    assert sha256_of(WEIGHTS_DIR / spec.tflite) == spec.sha256
    provenance = (WEIGHTS_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    assert spec.tflite in provenance and spec.sha256 in provenance


def test_onnx_export_runs_the_pipeline(tmp_path, landmarker, astronaut) -> None:
    """``blazeport export face_landmark --format onnx`` passes the landmark gate, and the pipeline on
    onnxruntime finds the landmarks LiteRT does."""
    from blazeport.export import export
    from blazeport.modelfiles.backends import OnnxBackend

    out = tmp_path / "face_landmark.onnx"
    report = export("face_landmark", "onnx", out)
    assert report["ok"] and set(report["max_abs_diff"]) == {"landmarks", "face_flag"}
    onnx = FaceLandmarker(landmarker.detector, LANDMARK_SPECS["face_landmark"], OnnxBackend(out), max_faces=None)
    ours, ref = onnx.process(astronaut), landmarker.process(astronaut)
    assert len(ours) == len(ref) == 1
    assert np.abs(ours[0].landmarks - ref[0].landmarks).max() < 1e-4


def test_a_panorama_over_32767_px_is_cropped_where_its_rect_is() -> None:
    """cv2.remap takes sides under 32767 px: a wider image is shrunk first, the normalized rect still
    lands on the same content (here: the bright part beyond pixel 33000, which a clipped map would miss)."""
    img = np.zeros((64, 40000, 3), np.uint8)
    img[:, 33000:] = 200
    t = warp_rect(img, Rect(0.9, 0.5, 0.01, 0.5, 0.0), 16, (0.0, 1.0))
    assert t.min() == pytest.approx(200 / 255)
    eye, _ = crop_eye(img, Rect(0.9, 0.5, 0.01, 0.5, 0.0), 16)
    assert eye.min() == pytest.approx(200 / 255)
