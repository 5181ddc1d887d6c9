"""ExecuTorch export (``--format executorch``, a ``.pte`` with the XNNPACK delegate) and the
``executorch`` backend: verified round trips on real photos, the spec inside the file, a student,
clear errors for broken files, and no verified file replaced by a failing one.

The short-range export runs once (module fixture, through the CLI); lowering is the slow part
(~15 s on 2 cores), so the failing-verification test reuses its bytes instead of lowering again.
Skips when ``executorch`` (the ``[export]`` extra) is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("executorch.exir", reason="ExecuTorch export needs the [export] extra (executorch)")

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.modelfiles.metadata import SPEC_KEY, spec_from_metadata
from blazeport.specs import spec_named
from tests.conftest import SHORT_RANGE_TFLITE, WEIGHTS
from tests.test_export import _assert_same_detections, _photo_paths


@pytest.fixture(scope="module")
def sr_pte(tmp_path_factory) -> tuple[Path, dict]:
    """short_range through the CLI, verified on the real photos, --json report."""
    out = tmp_path_factory.mktemp("pte") / "sr.pte"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["export", "short_range", "--format", "executorch", "-o", str(out), "--json",
                     "--images", *map(str, _photo_paths())])
    assert code == 0, buf.getvalue()
    return out, json.loads(buf.getvalue())


def test_short_range_pte_is_verified_and_fully_delegated(sr_pte) -> None:
    path, r = sr_pte
    assert r["ok"] and r["passes_gate"] and r["gated"] and r["runtime"] == "executorch"
    assert r["detections"]["same_count"] and r["detections"]["faces"] >= 1
    assert r["size_bytes"] == path.stat().st_size > 100_000 and r["input_shape"] == [1, 128, 128, 3]
    ops = r["op_counts"]
    # one XNNPACK delegate call runs the whole graph: every conv of the ONNX export, no portable kernel
    assert ops["delegate:XnnpackBackend"] == 1 and ops["portable_nodes"] == 0
    assert ops["xnnpack:convolution"] == 37 and ops["xnnpack_nodes"] >= 90


def test_pte_reloads_with_its_spec_and_detects_like_torch(sr_pte, capsys) -> None:
    path = sr_pte[0]
    det = blazeport.load(path)  # no backend named: a .pte runs on executorch, spec from the file
    assert det.backend.name == "executorch" and det.spec == spec_named("short_range")
    assert spec_from_metadata(det.backend.metadata, path) == spec_named("short_range")
    assert json.loads(det.backend.metadata[SPEC_KEY])["name"] == "short_range"
    assert _assert_same_detections(det, blazeport.load("short_range")) >= 1
    photo = str(_photo_paths()[0])
    assert main(["detect", "--model", str(path), "--backend", "executorch", "--threads", "1", photo]) == 0
    assert "1 face(s)" in capsys.readouterr().out


def test_student_safetensors_exports_to_pte(tmp_path) -> None:
    from blazeport.export import export
    from blazeport.pipeline.preprocess import read_image

    source = WEIGHTS / "short_range_resnet.safetensors"
    out = tmp_path / "student.pte"
    r = export(source, "executorch", out, images=[read_image(p) for p in _photo_paths()])
    assert r["ok"] and r["passes_gate"] and r["detections"]["same_count"], r
    assert r["op_counts"]["portable_nodes"] == 0  # BatchNorm folded: all of it on XNNPACK
    student = blazeport.load(out)
    assert student.spec.name == blazeport.load(source).spec.name


def test_broken_or_foreign_pte_files_name_the_file(sr_pte, tmp_path, capsys) -> None:
    good = sr_pte[0]
    empty, truncated, text, foreign = (tmp_path / f"{n}.pte" for n in ("empty", "truncated", "notes", "foreign"))
    empty.write_bytes(b"")
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("these are my notes, not a model\n" * 20)
    foreign.write_bytes(SHORT_RANGE_TFLITE.read_bytes())  # a .tflite renamed
    for path, why in ((empty, "empty"), (truncated, "truncated"), (text, "not an ExecuTorch program"),
                      (foreign, "not an ExecuTorch program"), (tmp_path / "missing.pte", "no such")):
        with pytest.raises(BlazeportError, match=why) as err:
            blazeport.load(path, backend="executorch")
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        if path.exists():
            code = main(["detect", "--model", str(path), "--backend", "executorch"])
            err_text = capsys.readouterr().err
            assert code == 2 and str(path) in err_text and "Traceback" not in err_text
    with pytest.raises(BlazeportError, match="executorch backend"):
        blazeport.load(good, backend="torch")  # a .pte holds no PyTorch weights


def test_failing_verification_keeps_the_previous_pte(sr_pte, tmp_path, monkeypatch, capsys) -> None:
    import blazeport.export.to_executorch as ex

    lowered = sr_pte[0].read_bytes()
    monkeypatch.setattr(ex, "lower_to_executorch", lambda program, metadata: lowered)  # skip the slow lowering
    out = tmp_path / "sr.pte"
    out.write_bytes(b"previous good export")
    monkeypatch.setattr("blazeport.modelfiles.verify.passes", lambda diffs: False)
    assert main(["export", "short_range", "--format", "executorch", "-o", str(out), "--json", "--overwrite"]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert out.read_bytes() == b"previous good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.pte"]  # no partial file left


def test_fp16_and_dynamic_batch_are_refused_clearly(tmp_path) -> None:
    from blazeport.export import export

    out = tmp_path / "x.pte"
    with pytest.raises(BlazeportError, match="--fp16 is not supported for executorch"):
        export("short_range", "executorch", out, fp16=True)
    with pytest.raises(BlazeportError, match="dynamic-batch"):
        export("short_range", "executorch", out, dynamic_batch=True)
    assert not out.exists()


def test_missing_executorch_gives_the_install_hint(sr_pte, tmp_path, monkeypatch) -> None:
    import sys

    from blazeport.export import export

    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    with pytest.raises(BlazeportError, match=r"executorch backend needs ExecuTorch: pip install 'blazeport\[export\]'"):
        blazeport.load(sr_pte[0])
    with pytest.raises(BlazeportError, match=r"ExecuTorch export needs executorch: pip install"):
        export("short_range", "executorch", tmp_path / "x.pte")
    assert not (tmp_path / "x.pte").exists()


# ----------------------------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def small_calibration(tmp_path_factory) -> Path:
    """The smallest folder int8 export accepts: 20 photos calibrate, 10 are held out to verify (symlinks)."""
    from blazeport.export.calibration import MIN_CALIBRATION, MIN_VERIFY
    from tests.conftest import SHARED_DATA

    unlabeled = SHARED_DATA / "unlabeled"
    if not unlabeled.is_dir():
        pytest.skip(f"real photos not found at {unlabeled}")
    photos = [p for sub in ("caltech1999_half", "human_samples") for p in sorted((unlabeled / sub).glob("*.jpg"))[:15]]
    assert len(photos) == MIN_CALIBRATION + MIN_VERIFY
    d = tmp_path_factory.mktemp("calibration")
    for p in photos:
        (d / f"{p.parent.name}_{p.name}").symlink_to(p)
    return d


@pytest.mark.slow
def test_short_range_int8_pte_meets_the_target_and_reloads(small_calibration, tmp_path, capsys) -> None:
    """--int8 through the same path as ONNX/TFLite: PT2E int8, XNNPACK-lowered, judged by AP50 vs float."""
    from blazeport.export.calibration import MIN_CALIBRATION, MIN_VERIFY
    from blazeport.export.fidelity import AP50_TARGET

    out = tmp_path / "sr_int8.pte"
    assert main(["export", "short_range", "--format", "executorch", "--int8", "--calibration", str(small_calibration),
                 "--calibration-count", str(MIN_CALIBRATION), "-o", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["written"] and r["weights"] == "int8" and r["worst_layers"] == []
    assert r["vs_float"]["AP50"] >= AP50_TARGET and r["vs_float"]["references"] > 0, r["vs_float"]
    q = r["quantization"]
    assert q["calibration_images"] == MIN_CALIBRATION and q["verification_images"] == MIN_VERIFY and q["io"] == "float32"
    assert r["size_bytes"] == out.stat().st_size and r["size_vs_float"] < 0.6  # int8 weights
    ops = r["op_counts"]  # still one delegate call, the quantize/dequantize pairs inside it
    assert ops["delegate:XnnpackBackend"] == 1 and ops["portable_nodes"] == 0 and ops["xnnpack:convolution"] == 37
    # int8 weights in every conv but the 4 of the SSD heads, which stay float (see quantize_for_executorch)
    assert ops["xnnpack:quantized_decomposed_dequantize_per_channel"] == 33 and len(q["float_nodes"]) > 4
    det = blazeport.load(out)
    assert det.backend.name == "executorch" and det.spec == spec_named("short_range")
    assert det.backend.metadata["blazeport.modelfiles.weights"] == "int8"
    photo = str(_photo_paths()[0])
    assert main(["detect", "--model", str(out), "--backend", "executorch", "--threads", "1", photo]) == 0
    assert "1 face(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_int8_layer_errors_compare_the_torch_programs(small_calibration, tmp_path) -> None:
    """What a missed target reports: per node of the PT2E graph, the int8 activation against the float one."""
    import numpy as np
    import torch

    from blazeport.export.calibration import load_calibration
    from blazeport.export.to_executorch import INT8_PROGRAMS, _pt2e, executorch_layer_errors
    from blazeport.modelfiles.loader import open_module
    from blazeport.modelfiles.verify import verification_inputs

    module, spec, _ = open_module("short_range")
    calib = load_calibration(small_calibration, spec, 20)
    for name, program in zip(INT8_PROGRAMS, _pt2e(module, calib.inputs), strict=True):
        torch.export.save(program, tmp_path / name)
    inputs = verification_inputs(spec, calib.verify_images[:2])[0][:-1]
    worst = executorch_layer_errors(tmp_path / "float.pte", tmp_path / "int8.pte", inputs)
    assert len(worst) == 5 and all(w["op"] and "/" in w["tensor"] for w in worst), worst
    errors = np.array([w["relative_error"] for w in worst])
    assert (np.diff(errors) <= 0).all() and errors[-1] > 0 and errors[0] < 1  # rounding error, not int8 codes
    assert executorch_layer_errors(tmp_path / "x" / "float.pte", tmp_path / "int8.pte", inputs) == []


def test_int8_options_executorch_does_not_offer_are_refused_first(tmp_path) -> None:
    from blazeport.export import export

    out = tmp_path / "x.pte"
    for kwargs, flag in (({"dynamic": True}, "--dynamic"), ({"int8_io": True, "calibration": tmp_path}, "--int8-io")):
        with pytest.raises(BlazeportError, match=f"{flag} is not offered for executorch --int8; it is for onnx, tflite"):
            export("short_range", "executorch", out, int8=True, **kwargs)
    assert not out.exists()
