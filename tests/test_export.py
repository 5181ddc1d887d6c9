"""Export to ONNX and TFLite: round trips on real photos, metadata, dynamic batch, clean graphs,
the onnx backend, and clear errors for broken files.

Each export runs once per module (module-scoped fixtures); the TFLite ones skip when the
optional ``litert_torch`` ([export] extra) is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import blazeport
from blazeport.cli import build_parser, main
from blazeport.errors import BlazeportError
from blazeport.modelfiles.backends import OnnxBackend, TorchBackend
from blazeport.modelfiles.metadata import SPEC_KEY, spec_from_metadata, tflite_metadata
from blazeport.specs import WEIGHTS_DIR, spec_named
from tests.conftest import SHARED_DATA

ATOL = 1e-4


def _photo_paths() -> list[Path]:
    """skimage's astronaut plus two photos of faces-boxed when the shared data is there."""
    from blazeport.pipeline.photos import sample_image_path

    boxed = sorted((SHARED_DATA / "faces-boxed" / "images").glob("*.jpg"))[:2] if SHARED_DATA.is_dir() else []
    return [sample_image_path("astronaut"), *boxed]


def _assert_same_detections(a: blazeport.Detector, b: blazeport.Detector, atol: float = ATOL) -> int:
    total = 0
    for path in _photo_paths():
        x, y = a.detect(path), b.detect(path)
        assert len(x) == len(y), path
        for p, q in zip(x, y, strict=True):
            assert abs(p.score - q.score) <= atol, path
            np.testing.assert_allclose(p.box, q.box, atol=atol)
            np.testing.assert_allclose(p.keypoints, q.keypoints, atol=atol)
        total += len(x)
    return total


@pytest.fixture(scope="module")
def sr_onnx(tmp_path_factory) -> tuple[Path, dict]:
    """short_range through the CLI: dynamic batch, verified on the photos above, --json report."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("onnx") / "sr.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["export", "short_range", "--format", "onnx", "--dynamic-batch", "-o", str(out), "--json",
                     "--images", *map(str, _photo_paths())])
    assert code == 0, buf.getvalue()
    return out, json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def sparse_onnx(tmp_path_factory) -> tuple[Path, dict]:
    from blazeport.export import export
    from blazeport.pipeline.preprocess import read_image

    out = tmp_path_factory.mktemp("onnx") / "frs.onnx"
    return out, export("full_range_sparse", "onnx", out, images=[read_image(p) for p in _photo_paths()])


def test_export_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: blazeport export" in text and "--fp16" in text and "--dynamic-batch" in text


def test_onnx_json_report(sr_onnx) -> None:
    path, r = sr_onnx
    assert r["ok"] and r["passes_gate"] and r["gated"]
    assert r["size_bytes"] == path.stat().st_size > 100_000
    assert r["seconds"] > 0 and r["opset"] >= 18 and r["layout"] == "NHWC" and r["input_shape"][0] == "batch"
    assert set(r["max_abs_diff"]) == {"regressors", "classificators"}
    assert r["detections"]["same_count"] and r["detections"]["faces"] >= 1
    assert r["op_counts"]["Conv"] == 37 and r["original_op_counts"]["CONV_2D"] == 21


def test_onnx_graph_is_clean(sr_onnx, sparse_onnx) -> None:
    """SAME padding folds to constants: no Shape/Gather chains; Transposes only at the input and heads."""
    for (_, r), heads in ((sr_onnx, 2), (sparse_onnx, 1)):
        ops = r["op_counts"]
        assert not {"Shape", "Gather", "ConstantOfShape", "Slice"} & set(ops), ops
        assert ops["Transpose"] <= 1 + 2 * heads + 2, ops  # input + heads (+ sparse's 2 depth-to-space)


def test_onnx_metadata_round_trip(sr_onnx) -> None:
    backend = OnnxBackend(sr_onnx[0])
    assert spec_from_metadata(backend.metadata, sr_onnx[0]) == spec_named("short_range")
    assert backend.metadata["blazeport.layout"] == "NHWC" and not backend.nchw


def test_onnx_dynamic_batch_of_three(sr_onnx) -> None:
    from blazeport.modelfiles.verify import compare_outputs, passes
    from blazeport.modelfiles.weights import load_safetensors
    from blazeport.pipeline.anchors import anchors_for
    from tests.conftest import WEIGHTS

    backend = OnnxBackend(sr_onnx[0])
    assert backend.batch is None
    x = np.random.default_rng(1).uniform(-1, 1, (3, 128, 128, 3)).astype(np.float32)
    ours = backend(x)
    assert ours[0].shape == (3, 896, 16) and ours[1].shape == (3, 896, 1)
    module, spec = load_safetensors(WEIGHTS / "short_range.safetensors")
    assert passes(compare_outputs(ours, TorchBackend(module)(x), spec, anchors_for(spec)))


def test_onnx_detections_match_torch(sr_onnx) -> None:
    onnx_det = blazeport.load(sr_onnx[0], backend="onnx")  # spec from the file's metadata
    assert onnx_det.spec == spec_named("short_range")
    assert _assert_same_detections(onnx_det, blazeport.load("short_range")) >= 1


def test_onnx_backend_needs_no_torch(sr_onnx) -> None:
    """A board with onnxruntime and numpy runs an exported file: torch is never imported."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import blazeport, skimage.data\n"
        f"faces = blazeport.load({str(sr_onnx[0])!r}, backend='onnx').detect(skimage.data.astronaut())\n"
        "assert len(faces) == 1, faces\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_graph_family_onnx_round_trip(sparse_onnx) -> None:
    path, r = sparse_onnx
    assert r["ok"] and r["passes_gate"] and r["detections"]["same_count"]
    assert r["original_op_counts"]["DEPTH_TO_SPACE"] == 2
    _assert_same_detections(blazeport.load(path, backend="onnx"), blazeport.load("full_range_sparse"))


def test_spec_argument_for_a_file_without_metadata(sr_onnx, tmp_path) -> None:
    import onnx

    model = onnx.load(str(sr_onnx[0]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(BlazeportError, match="--spec") as err:
        blazeport.load(bare, backend="onnx")
    assert str(bare) in str(err.value)
    assert blazeport.load(bare, backend="onnx", spec="short_range").spec.name == "short_range"
    with pytest.raises(BlazeportError, match="192px"):
        blazeport.load(bare, backend="onnx", spec="full_range")  # 128px file, 192px spec


def _broken_files(tmp_path: Path, good: Path) -> list[Path]:
    import onnx
    from onnx import TensorProto, helper

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a model\n" * 20)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    return [empty, truncated, text, foreign, tmp_path / "missing.onnx"]


def test_broken_or_foreign_onnx_files_name_the_file(sr_onnx, tmp_path, capsys) -> None:
    for path in _broken_files(tmp_path, sr_onnx[0]):
        with pytest.raises(BlazeportError) as err:
            blazeport.load(path, backend="onnx")
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        code = main(["detect", "--model", str(path), "--backend", "onnx"])
        err_text = capsys.readouterr().err
        assert code == 2 and str(path) in err_text and "Traceback" not in err_text


def test_broken_tflite_files_name_the_file(tmp_path) -> None:
    from tests.conftest import SHORT_RANGE_TFLITE

    empty, truncated, text = tmp_path / "empty.tflite", tmp_path / "truncated.tflite", tmp_path / "notes.tflite"
    empty.write_bytes(b"")
    truncated.write_bytes(SHORT_RANGE_TFLITE.read_bytes()[:50_000])
    text.write_text("not a model\n" * 50)
    for path in (empty, truncated, text):
        with pytest.raises(BlazeportError) as err:
            blazeport.load(path, backend="tflite")
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_backend_for_a_file(sr_onnx) -> None:
    with pytest.raises(BlazeportError, match="onnx backend"):
        blazeport.load(sr_onnx[0], backend="torch")
    with pytest.raises(BlazeportError, match="blazeport export"):
        blazeport.load("short_range", backend="onnx")


# ---------------------------------------------------------------------------------------------- TFLite


@pytest.fixture(scope="module")
def sr_tflite(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """short_range exported with float32 and with float16 weights.

    The float16 export quantizes the same float32 flatbuffer, so the litert-torch conversion (the
    slow part, ~10 s) runs once and is reused; everything after it (fp16 quantization, metadata,
    writing, verification, the report) runs for each export.
    """
    pytest.importorskip("litert_torch", reason="TFLite export needs the [export] extra (litert-torch)")
    import blazeport.export.to_tflite as ex
    from blazeport.export import export
    from blazeport.pipeline.preprocess import read_image

    images = [read_image(p) for p in _photo_paths()]
    d = tmp_path_factory.mktemp("tflite")
    converted: list[bytes] = []
    real = ex._litert_convert

    def convert_once(module, spec):
        if not converted:
            converted.append(real(module, spec))
        return converted[0]

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "_litert_convert", convert_once)
        for name, fp16 in (("fp32", False), ("fp16", True)):
            path = d / f"sr_{name}.tflite"
            out[name] = (path, export("short_range", "tflite", path, fp16=fp16, images=images))
    return out


def test_tflite_fp32_round_trip(sr_tflite) -> None:
    path, r = sr_tflite["fp32"]
    assert r["ok"] and r["passes_gate"] and r["detections"]["same_count"]
    assert r["size_bytes"] == path.stat().st_size
    # NHWC all the way: no layout transposes; the compute ops are the original's (RELU fused)
    ops, orig = r["op_counts"], r["original_op_counts"]
    assert "TRANSPOSE" not in ops and "GATHER" not in ops
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "PAD", "RESHAPE", "CONCATENATION"):
        assert ops[op] == orig[op], op
    # pools run before the shortcut's channel PAD, as in Google's file (the PAD then writes 1/4 the pixels)
    assert _pools_then_pads(path) == _pools_then_pads(WEIGHTS_DIR / spec_named("short_range").tflite) == 3
    det = blazeport.load(path, backend="tflite")  # spec from the file's metadata
    assert det.spec == spec_named("short_range")
    assert tflite_metadata(path)[SPEC_KEY] == json.dumps(spec_named("short_range").to_dict())
    assert det.backend.input["shape"].tolist() == [1, 128, 128, 3]  # NHWC like Google's file
    _assert_same_detections(det, blazeport.load("short_range"))


def _pools_then_pads(path: Path) -> int:
    """MAX_POOL_2D ops that read no PAD's output and feed a PAD."""
    from blazeport.tflite import read_tflite

    ops = read_tflite(path).ops
    made_by = {t: op.type for op in ops for t in op.outputs}
    read_by = {t: op.type for op in ops for t in op.inputs}
    return sum(op.type == "MAX_POOL_2D" and made_by.get(op.inputs[0]) != "PAD" and read_by.get(op.outputs[0]) == "PAD"
               for op in ops)


def test_tflite_fp16_reported_and_detections_match(sr_tflite) -> None:
    path, r = sr_tflite["fp16"]
    fp32_size = sr_tflite["fp32"][1]["size_bytes"]
    assert r["ok"] and not r["gated"] and r["weights"] == "float16"
    assert r["size_bytes"] < 0.7 * fp32_size and r["op_counts"]["DEQUANTIZE"] > 0
    assert 0 < max(r["max_abs_diff"].values()) < 0.5  # reported: float16 weights move raw outputs a little
    assert r["detections"]["same_count"] and r["detections"]["max_coordinate_diff"] < 5e-3
    _assert_same_detections(blazeport.load(path, backend="tflite"), blazeport.load("short_range"), atol=5e-3)


def test_dynamic_batch_is_onnx_only() -> None:
    from blazeport.export import export

    with pytest.raises(BlazeportError, match="dynamic-batch"):
        export("short_range", "tflite", "x.tflite", dynamic_batch=True)
