"""Full-integer export (``blazeport export --int8``): real models calibrated and verified on real photos.

The calibration folder is a small deterministic subset of ``../shared/data/unlabeled`` (symlinks in a
temporary folder: 45 photos, 10 held out to verify, 35 to calibrate), so each quantization takes
seconds. Each export runs once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import blazeport
from blazeport.cli import build_parser, main
from blazeport.errors import BlazeportError
from blazeport.export import export
from blazeport.export.calibration import MIN_CALIBRATION, MIN_VERIFY
from blazeport.export.fidelity import AP50_TARGET
from blazeport.pipeline.photos import sample_image_path

COUNT = 35


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory) -> Path:
    from tests.conftest import SHARED_DATA

    unlabeled = SHARED_DATA / "unlabeled"
    if not unlabeled.is_dir():
        pytest.skip(f"real photos not found at {unlabeled}")
    photos = sorted((unlabeled / "caltech1999_half").glob("*.jpg"))[:25]
    photos += sorted((unlabeled / "human_samples").glob("*.jpg"))[:20]
    d = tmp_path_factory.mktemp("calibration")
    for p in photos:
        (d / f"{p.parent.name}_{p.name}").symlink_to(p)
    return d


@pytest.fixture(scope="module")
def sr_onnx_int8(calibration_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "sr_int8.onnx"
    return out, export("short_range", "onnx", out, int8=True, calibration=calibration_dir, calibration_count=COUNT)


def test_onnx_int8_meets_the_target_and_runs_in_the_pipeline(sr_onnx_int8) -> None:
    path, r = sr_onnx_int8
    assert r["ok"] and r["written"] and path.is_file() and r["worst_layers"] == []
    assert r["vs_float"]["AP50"] >= AP50_TARGET and r["vs_float"]["references"] > 0
    q = r["quantization"]
    assert q["calibration_images"] == COUNT and q["verification_images"] == MIN_VERIFY and q["io"] == "float32"
    assert r["op_counts"]["QuantizeLinear"] > 30 and r["op_counts"]["DequantizeLinear"] > 30
    assert r["size_bytes"] == path.stat().st_size and r["size_vs_float"] < 0.6  # int8 weights
    from blazeport.bench.counts import module_counts, onnx_counts

    det = blazeport.load("short_range")
    (params, macs), (m_params, m_macs) = onnx_counts(path), module_counts(det.backend.module, det.spec)
    # through the DequantizeLinear weights, without the QDQ scales (as the float ONNX file counts: 100,442)
    assert macs == m_macs and abs(params - m_params) < 0.01 * m_params
    det = blazeport.load(path, backend="onnx")  # the spec from the file's metadata
    assert det.spec.name == "short_range" and det.backend.metadata["blazeport.modelfiles.weights"] == "int8"
    faces = det.detect(sample_image_path("astronaut"))
    ref = blazeport.load("short_range").detect(sample_image_path("astronaut"))
    assert len(faces) == len(ref) == 1 and np.allclose(faces[0].box, ref[0].box, atol=0.02)


def test_onnx_int8_io_round_trip(calibration_dir, tmp_path) -> None:
    out = tmp_path / "sr_io.onnx"
    r = export("short_range", "onnx", out, int8=True, int8_io=True, calibration=calibration_dir, calibration_count=COUNT)
    assert r["ok"], r["vs_float"]
    backend = blazeport.load(out, backend="onnx").backend
    assert backend.session.get_inputs()[0].type == "tensor(int8)"
    stored = json.loads(backend.metadata["blazeport.input_quantization"])
    assert stored == r["quantization"]["input"] and 0 < stored["scale"] < 0.01  # [-1, 1] in 255 steps
    assert backend.input_quantization[2] is np.int8
    # the backend quantizes the float batch itself: the same letterboxed input gives the same faces as float
    faces = blazeport.load(out, backend="onnx").detect(sample_image_path("astronaut"))
    assert len(faces) == 1 and faces[0].score > 0.5


def test_a_missed_target_writes_nothing_and_names_the_worst_layers(calibration_dir, tmp_path, monkeypatch) -> None:
    import blazeport.export.fidelity as fidelity

    monkeypatch.setattr(fidelity, "AP50_TARGET", 1.01)  # no file can meet it
    out = tmp_path / "sr_int8.onnx"
    out.write_bytes(b"previous export")
    r = export("short_range", "onnx", out, int8=True, calibration=calibration_dir, calibration_count=MIN_CALIBRATION,
               overwrite=True)
    assert not r["ok"] and not r["written"] and out.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [out]  # no partial file left
    worst = r["worst_layers"]
    assert len(worst) == 5 and worst[0]["relative_error"] >= worst[-1]["relative_error"] > 0
    assert all(w["op"] for w in worst)


@pytest.mark.slow
def test_tflite_int8_float_io_and_int8_io(calibration_dir, tmp_path) -> None:
    """TFLite via ai-edge-quantizer: float input through a QUANTIZE op by default, int8 input with --int8-io."""
    pytest.importorskip("litert_torch", reason="TFLite export needs the [export] extra (litert-torch)")
    import blazeport.export.to_tflite as ex

    converted: list[bytes] = []
    real = ex._litert_convert

    def convert_once(module, spec):  # the float conversion (the slow part) runs once for both files
        if not converted:
            converted.append(real(module, spec))
        return converted[0]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "_litert_convert", convert_once)
        a = export("short_range", "tflite", tmp_path / "a.tflite", int8=True, calibration=calibration_dir,
                   calibration_count=COUNT)
        b = export("short_range", "tflite", tmp_path / "b.tflite", int8=True, int8_io=True, calibration=calibration_dir,
                   calibration_count=COUNT)
    for r in (a, b):
        assert r["ok"] and r["vs_float"]["AP50"] >= AP50_TARGET and r["size_vs_float"] < 0.6, r["vs_float"]
        assert r["op_counts"]["CONV_2D"] == 21 and r["op_counts"]["DEQUANTIZE"] == 2  # heads float (see quantize.py)
    assert a["op_counts"]["QUANTIZE"] == 1 and "QUANTIZE" not in b["op_counts"]
    fa, fb = blazeport.load(tmp_path / "a.tflite", backend="tflite"), blazeport.load(tmp_path / "b.tflite", backend="tflite")
    assert fa.backend.input["dtype"] == np.float32 and fa.backend.input_quantization is None
    assert fb.backend.input["dtype"] == np.int8 and fb.backend.input_quantization[0] > 0
    assert fb.backend.outputs[0]["dtype"] == np.float32
    for det in (fa, fb):
        assert len(det.detect(sample_image_path("astronaut"))) == 1


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"int8_io": True}, "--int8-io is an option of --int8"),
    ({"dynamic": True}, "--dynamic is an option of --int8"),
    ({"int8": True, "fp16": True}, "choose one"),
    ({"int8": True}, "--int8 needs --calibration DIR"),
    ({"int8": True, "dynamic": True, "int8_io": True}, "no --int8-io"),
])
def test_flag_combinations_are_refused(kwargs, message, tmp_path) -> None:
    out = tmp_path / "x.onnx"
    with pytest.raises(BlazeportError, match=message):
        export("short_range", "onnx", out, **kwargs)
    assert not out.exists()


def test_calibration_folder_without_readable_photos(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "sr_int8.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(BlazeportError) as err:
        export("short_range", "onnx", out, int8=True, calibration=folder, overwrite=True)
    text = str(err.value)
    assert str(folder) in text and "0 readable photo(s) of 40" in text and "40 unreadable" in text
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "sr_int8.onnx"]


def test_too_few_calibration_photos_says_how_many(calibration_dir, tmp_path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(calibration_dir.iterdir())[:12]:
        (few / p.name).symlink_to(p.resolve())
    with pytest.raises(BlazeportError, match=rf"12 image file\(s\); int8 export needs at least {MIN_CALIBRATION + MIN_VERIFY}"):
        export("short_range", "onnx", tmp_path / "x.onnx", int8=True, calibration=few)
    with pytest.raises(BlazeportError, match="no such folder"):
        export("short_range", "onnx", tmp_path / "x.onnx", int8=True, calibration=tmp_path / "missing")
    assert not (tmp_path / "x.onnx").exists()


def test_a_file_as_calibration_is_called_a_file_not_missing(tmp_path, capsys) -> None:
    """An image file given as --calibration was refused as "no such folder", though it exists."""
    photo = sample_image_path("astronaut")
    notes = tmp_path / "photos.txt"
    notes.write_text("a list of photos\n")
    out = tmp_path / "x.onnx"
    for given, what in ((photo, "is an image file, not a folder"), (notes, "is a file, not a folder")):
        with pytest.raises(BlazeportError, match="needs a folder of real photos") as err:
            export("short_range", "onnx", out, int8=True, calibration=given)
        assert f"--calibration {given}: {what}" in str(err.value) and "no such folder" not in str(err.value)
    assert main(["export", "short_range", "--format", "onnx", "--int8", "--calibration", str(photo), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is an image file, not a folder" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    assert "not a single image" in " ".join(capsys.readouterr().out.split())


def test_cli_help_and_error(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    text = capsys.readouterr().out
    for flag in ("--int8", "--calibration", "--calibration-count", "--int8-io", "--dynamic"):
        assert flag in text
    assert main(["export", "short_range", "--format", "onnx", "--int8-io"]) == 2
    assert "add --int8" in capsys.readouterr().err
