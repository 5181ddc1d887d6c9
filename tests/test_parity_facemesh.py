"""End to end against MediaPipe itself: ``blazeport.load_landmarks`` vs
``mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False)`` on real photos,
on the torch and the tflite backends: the same faces, and every landmark within 2e-3 (normalized);
and ``load_landmarks(refine=True)`` vs ``refine_landmarks=True`` (the attention mesh, 478 landmarks) on
torch and on its ONNX export (slow).
In practice they agree to ~5e-5 (``tools/facemesh_parity.py``, README "Parity with MediaPipe").

MediaPipe's Python package runs no graph with the iris model (``iris_landmark.tflite``), so iris
has no oracle; the last test only checks that our iris centres land where FaceMesh's *other* iris
model (``refine_landmarks=True``, the attention mesh) puts them, loosely.

Needs the optional ``parity`` extra (``pip install -e ".[parity]"``); skipped without it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="MediaPipe is the oracle here; install the optional extra: pip install -e '.[parity]'")

from blazeport.pipeline.landmarks import load_landmarks
from blazeport.pipeline.preprocess import read_image
from tools.facemesh_parity import DATA, LANDMARK_TOL, compare, default_images, iris_vs_attention_mesh, mediapipe_landmarks

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # protobuf 4 vs MediaPipe

MAX_FACES = 5


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray]]:
    """astronaut, the 12 faces-boxed photos (small faces: mostly none for short range, as for
    MediaPipe) and one photo of each unlabeled folder."""
    import skimage.data

    if not DATA.is_dir():
        pytest.skip(f"real photos not found at {DATA} (the shared data folder beside the checkout)")
    return [("skimage astronaut", skimage.data.astronaut())] + [
        (str(p.relative_to(DATA)), read_image(p)) for p in default_images(DATA, per_folder=1)]


@pytest.fixture(scope="module")
def theirs(photos) -> list[list[np.ndarray]]:
    return mediapipe_landmarks([img for _, img in photos], MAX_FACES)


@pytest.mark.parametrize("backend", ["torch", "tflite"])
def test_same_faces_and_landmarks_as_facemesh(photos, theirs, backend: str) -> None:
    landmarker = load_landmarks(backend=backend, max_faces=MAX_FACES)
    ours = [[f.landmarks.astype(np.float64) for f in landmarker.process(img)] for _, img in photos]
    report = compare(ours, theirs, [name for name, _ in photos])
    assert report["mediapipe_faces"] >= 5, "the photos must hold faces for this to mean anything"
    assert report["same_faces"], report["count_mismatches"]
    assert report["max_xy_diff"] <= LANDMARK_TOL, report
    assert report["max_z_diff"] <= LANDMARK_TOL, report


def test_one_face_by_default_as_facemesh(photos) -> None:
    """FaceMesh's max_num_faces=1 keeps the top detection; so does load_landmarks by default."""
    img = next(i for n, i in photos if "astronaut" in n)
    (face,) = load_landmarks(backend="tflite").process(img)
    (ref,) = mediapipe_landmarks([img], 1)[0]
    assert np.abs(face.landmarks - ref).max() <= LANDMARK_TOL


def test_iris_centres_near_facemesh_attention_model(photos) -> None:
    """Not parity (two different models): the iris model's iris centres within a few thousandths of
    the attention mesh's (median), on the photos' faces."""
    r = iris_vs_attention_mesh([img for _, img in photos], MAX_FACES)
    assert r["eyes"] >= 10
    assert r["median_centre_diff"] < 3e-3, r


@pytest.fixture(scope="module")
def theirs_refined(photos) -> list[list[np.ndarray]]:
    return mediapipe_landmarks([img for _, img in photos], MAX_FACES, refine=True)


def _check_refined(photos, theirs_refined, landmarker) -> None:
    ours = [[f.landmarks.astype(np.float64) for f in landmarker.process(img)] for _, img in photos]
    report = compare(ours, theirs_refined, [name for name, _ in photos])
    assert report["mediapipe_faces"] >= 5 and report["landmarks_per_face"] == [478]
    assert report["same_faces"], report["count_mismatches"]
    assert report["max_xy_diff"] <= LANDMARK_TOL and report["max_z_diff"] <= LANDMARK_TOL, report


def test_refined_landmarks_as_facemesh_with_refine_landmarks(photos, theirs_refined) -> None:
    """FaceMesh(refine_landmarks=True): the attention mesh, 478 landmarks, on the converted model (torch)."""
    pytest.importorskip("torch")
    _check_refined(photos, theirs_refined, load_landmarks(backend="torch", max_faces=MAX_FACES, refine=True))


@pytest.mark.slow
def test_refined_landmarks_on_onnx_as_facemesh(photos, theirs_refined, tmp_path) -> None:
    """The same on onnxruntime, from `blazeport export face_landmark_with_attention --format onnx`."""
    pytest.importorskip("torch")
    from blazeport.export import export

    mesh = tmp_path / "attention.onnx"
    assert export("face_landmark_with_attention", "onnx", mesh)["ok"]
    # the .onnx mesh runs on onnxruntime, the detector on its default runtime
    _check_refined(photos, theirs_refined, load_landmarks(mesh, max_faces=MAX_FACES, refine=True))
