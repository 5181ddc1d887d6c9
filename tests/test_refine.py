"""The attention mesh's 478 landmarks: MediaPipe's assembly (index maps, z rules), the maps against the
wheel and the model, and ``landmarks --refine`` / ``load_landmarks(refine=True)`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import blazeport
from blazeport.cli import main
from blazeport.pipeline.photos import sample_image_path
from blazeport.pipeline.refine import NUM_REFINED_LANDMARKS, REFINEMENTS, refine_landmarks
from blazeport.specs import LANDMARK_SPECS, WEIGHTS_DIR

SPEC = LANDMARK_SPECS["face_landmark_with_attention"]


def _synthetic_outputs() -> dict[str, np.ndarray]:
    """Raw outputs whose values say where they came from: mesh landmark i is (i, i + 1000, -i) px;
    sub-mesh k of output o is (100 * o + k, 50 + k) px."""
    i = np.arange(468, dtype=np.float32)
    outs = {"landmarks": np.stack([i, i + 1000, -i], 1).ravel()}
    for o, r in enumerate(REFINEMENTS[1:], start=1):
        k = np.arange(len(r.indexes), dtype=np.float32)
        outs[r.output] = np.stack([100 * o + k, 50 + k], 1).ravel()
    return outs


def test_refinement_writes_xy_at_the_maps_and_follows_each_z_rule() -> None:
    out = refine_landmarks(_synthetic_outputs(), 192.0)
    assert out.shape == (NUM_REFINED_LANDMARKS, 3) and out.dtype == np.float32
    # untouched mesh landmarks: x, y and z of the mesh, / 192 (TensorsToLandmarksCalculator)
    assert out[1].tolist() == pytest.approx([1 / 192, 1001 / 192, -1 / 192])
    # lips (refinement 1): landmark 61 is the lips' first, 146 the second; z stays the mesh's ("none")
    assert out[61].tolist() == pytest.approx([100 / 192, 50 / 192, -61 / 192])
    assert out[146, :2].tolist() == pytest.approx([101 / 192, 51 / 192])
    # the right eye (refinement 3) writes 263 first; the eyes come after the lips (shared indices: the eye wins)
    assert out[263, :2].tolist() == pytest.approx([300 / 192, 50 / 192]) and out[263, 2] == pytest.approx(-263 / 192)
    # irises: x, y from the model, z the mean of 16 eye contour landmarks' (mesh) z ("assign_average")
    left_eye = REFINEMENTS[2].indexes[:16]
    assert out[468, :2].tolist() == pytest.approx([400 / 192, 50 / 192])
    assert np.allclose(out[468:473, 2], -np.mean(left_eye) / 192, atol=1e-7)
    assert np.allclose(out[473:478, 2], -np.mean(REFINEMENTS[3].indexes[:16]) / 192, atol=1e-7)


def test_the_maps_cover_478_landmarks_and_fit_the_models_outputs() -> None:
    """LandmarksRefinementCalculator's own checks (indices from 0 without gaps) and the output sizes."""
    indices = {i for r in REFINEMENTS for i in r.indexes}
    assert indices == set(range(NUM_REFINED_LANDMARKS))
    sizes = dict(SPEC.outputs)
    for r in REFINEMENTS:
        per_landmark = 3 if r.output == "landmarks" else 2
        assert sizes[r.output] == len(r.indexes) * per_landmark, r.output
        assert len(set(r.indexes)) == len(r.indexes)


def test_lips_and_eye_maps_are_the_models_own_crop_subsets() -> None:
    """Each sub-network refines the landmarks its Landmarks2TransformMatrix cropped around (the op's
    subset_idxs, read from the file), in the same order."""
    from blazeport.tflite import read_tflite

    model = read_tflite(WEIGHTS_DIR / SPEC.tflite)
    subsets = [tuple(op.options["custom"]["subset_idxs"]) for op in model.ops
               if op.type == "CUSTOM:Landmarks2TransformMatrix"]
    assert subsets == [r.indexes for r in REFINEMENTS[1:4]]


def test_the_maps_are_the_mediapipe_wheels() -> None:
    pytest.importorskip("mediapipe", reason="the parity extra: the maps are read from its compiled graph")
    from tools.refinement_maps import wheel_refinements

    assert wheel_refinements() == REFINEMENTS


# ---------------------------------------------------------------------------------------------
# The pipeline and the command


@pytest.fixture(scope="module")
def faces() -> tuple[list, list]:
    pytest.importorskip("torch")
    import skimage.data

    img = skimage.data.astronaut()
    return (blazeport.load_landmarks(refine=True, backend="torch").process(img),
            blazeport.load_landmarks(backend="torch").process(img))


def test_refine_gives_478_landmarks_near_the_plain_mesh(faces) -> None:
    refined, plain = faces
    assert len(refined) == len(plain) == 1
    r, p = refined[0].landmarks, plain[0].landmarks
    assert r.shape == (478, 3) and p.shape == (468, 3)
    # another model, the same face: within 1% of the image everywhere, and not the same numbers
    assert np.abs(r[:468, :2] - p[:, :2]).max() < 0.01 and np.abs(r[:468] - p).max() > 1e-4
    # each iris centre lies between its eye's corners (33/133 and 362/263)
    for centre, (a, b) in ((468, (33, 133)), (473, (362, 263))):
        lo, hi = np.minimum(r[a, :2], r[b, :2]), np.maximum(r[a, :2], r[b, :2])
        assert lo[0] < r[centre, 0] < hi[0] and abs(r[centre, 1] - (lo[1] + hi[1]) / 2) < 0.01


def test_cli_refine_json_drawing_and_summary(tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    photo = str(sample_image_path("astronaut"))
    assert main(["landmarks", photo, "--refine", "--json", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    (face,) = json.loads(captured.out)[0]["faces"]
    assert np.array(face["landmarks"]).shape == (478, 3)
    assert captured.err.strip().endswith(f"(face_landmark_with_attention, torch), drawings in {tmp_path}")
    assert main(["landmarks", photo, "--refine"]) == 0
    printed = capsys.readouterr().out
    assert "478 landmarks" in printed and "refined left iris (" in printed and "refined right iris (" in printed
    assert len(list(tmp_path.iterdir())) == 1


def test_the_drawing_shows_the_refined_irises(faces) -> None:
    """draw_landmarks of 478 landmarks adds a magenta circle around each refined iris centre, which a
    468-landmark face does not have."""
    from dataclasses import replace

    import skimage.data

    from blazeport.pipeline.draw import draw_landmarks

    img = skimage.data.astronaut()
    face = faces[0][0]
    with_irises = draw_landmarks(img, [face], mesh=False).astype(int)
    without = draw_landmarks(img, [replace(face, landmarks=face.landmarks[:468])], mesh=False).astype(int)
    changed = np.abs(with_irises - without).sum(2) > 0
    assert changed.any()
    ys, xs = np.nonzero(changed)
    pts = face.landmarks[[468, 473], :2] * 512
    near = np.min(np.hypot(xs[:, None] - pts[:, 0], ys[:, None] - pts[:, 1]), 1)
    assert near.max() < 10  # only around the iris centres
    magenta = (with_irises[..., 0] > 200) & (with_irises[..., 1] < 60) & (with_irises[..., 2] > 200)
    assert (magenta & changed).sum() > 10


def test_refine_refusals_are_one_line(capsys) -> None:
    photo = str(sample_image_path("astronaut"))
    # by name, LiteRT runs the bundled builtin-ops re-export; Google's file itself it cannot run
    assert main(["landmarks", photo, "--refine", "--backend", "tflite", "-q"]) == 0
    original = str(WEIGHTS_DIR / "face_landmark_with_attention.tflite")
    assert main(["landmarks", photo, "--refine", "--model", original, "--backend", "tflite", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "custom op" in err[0] and "--backend torch" in err[0]
    assert main(["landmarks", photo, "--refine", "--model", "face_landmark", "--backend", "tflite", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without attention" in err[0] and "face_landmark_with_attention" in err[0]


# ---------------------------------------------------------------------------------------------
# Export and bench


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory) -> tuple[dict, object]:
    pytest.importorskip("torch")
    from blazeport.export import export

    out = tmp_path_factory.mktemp("onnx") / "face_landmark_with_attention.onnx"
    return export("face_landmark_with_attention", "onnx", out), out


def test_onnx_export_has_no_custom_op_and_runs_the_pipeline(attention_onnx, faces) -> None:
    """The custom ops export as ONNX builtins; the file passes the landmark gate against PyTorch, and the
    pipeline on onnxruntime finds the 478 landmarks torch does."""
    import skimage.data

    report, path = attention_onnx
    assert report["ok"] and report["written"]
    assert set(report["max_abs_diff"]) == {name for name, _ in SPEC.outputs}
    ops = report["op_counts"]
    assert {"Atan", "Cos", "Sin", "Floor", "GatherElements"} <= set(ops)  # the three ops, in builtins
    assert not any(op.startswith("CUSTOM") or "Transform" in op for op in ops)
    lm = blazeport.load_landmarks(path, refine=True)  # the .onnx on onnxruntime, the detector on torch
    (face,) = lm.process(skimage.data.astronaut())
    assert face.landmarks.shape == (478, 3)
    assert np.abs(face.landmarks - faces[0][0].landmarks).max() < 1e-4


@pytest.mark.slow
def test_tflite_export_lowers_the_custom_ops_to_builtins(tmp_path) -> None:
    """litert-torch (the export extra) writes the attention mesh with builtin ops only, which LiteRT runs:
    verified against PyTorch, and the pipeline on it gives 478 landmarks."""
    pytest.importorskip("litert_torch", reason="TFLite export needs the export extra")
    from blazeport.export import export
    from blazeport.tflite import read_tflite

    out = tmp_path / "attention.tflite"
    report = export("face_landmark_with_attention", "tflite", out)
    assert report["ok"] and not read_tflite(out).custom_ops()
    assert {"ATAN2", "COS", "SIN", "FLOOR", "GATHER_ND"} <= set(report["op_counts"])
    (face,) = blazeport.load_landmarks(out, backend="tflite", refine=True).process(
        blazeport.pipeline.preprocess.read_image(sample_image_path("astronaut")))
    assert face.landmarks.shape == (478, 3)


def test_bench_times_the_attention_mesh_model_only(tmp_path) -> None:
    """bench takes landmark models: model-only rows, and no original row for a file LiteRT cannot run."""
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert main(["bench", "face_landmark_with_attention", "--backend", "torch", "--runs", "3", "--warmup", "0",
                 "--e2e", "--json", str(out), "--cache", str(tmp_path / "cache")]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["model"], r["backend"], r["mode"]) for r in rows] == [("face_landmark_with_attention", "torch", "model")]
    assert rows[0]["stats"]["p50"] > 0 and rows[0]["params"] == 1_189_277
    assert any("LiteRT cannot run" in n for n in report["notes"]) and any("model only" in n for n in report["notes"])


def test_iris_compare_pairs_the_two_models_irises(monkeypatch) -> None:
    """tools/iris_compare.py on the astronaut: both eyes compared, the two models' iris points a few
    hundredths of the eye width apart; the right eye's iris-model points taken in their own order (not
    un-mirrored) land a radius away, which is why the tool reorders them."""
    pytest.importorskip("torch")
    from tools import iris_compare

    photo = sample_image_path("astronaut")
    r = iris_compare.run([photo], max_faces=1)
    assert r["eyes"] == 2 and r["mean"]["max"] < 0.08 and r["centre"]["max"] < 0.08
    assert 0.1 < r["radius_refined"]["median"] < 0.3 and 0.1 < r["radius_iris_model"]["median"] < 0.3
    monkeypatch.setitem(iris_compare.EYES, "right", (473, (362, 263), (0, 1, 2, 3, 4)))
    unordered = iris_compare.run([photo], max_faces=1)
    assert unordered["max"]["max"] > 2 * r["max"]["max"]
