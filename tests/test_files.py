"""No command loses a user's file: outputs never land on inputs, and only verified files replace
good ones (issue 9's reproductions, one test each)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.files import check_output, drawing_paths, staged, write_atomic
from tests.conftest import SHORT_RANGE_TFLITE


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name or p.suffix == ".tmp")


# -- convert -------------------------------------------------------------------------------


def test_convert_failing_verification_keeps_previous_output(tmp_path, capsys) -> None:
    """Two flipped bytes in a weight buffer: readable, converts, fails the gate; the good output stays."""
    good = tmp_path / "good.safetensors"
    assert run(capsys, "convert", str(SHORT_RANGE_TFLITE), "-o", str(good))[0] == 0
    before = good.read_bytes()
    data = bytearray(SHORT_RANGE_TFLITE.read_bytes())
    data[100000:100002] = b"\x00\x7c"  # a float16 weight becomes +inf
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    code, out, err = run(capsys, "convert", str(bad), "--spec", "short_range", "-o", str(good), "--overwrite")
    assert code == 1 and "FAILED" in out and "nothing written" in err
    assert good.read_bytes() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_convert_refuses_to_write_over_its_input(tmp_path, capsys, how: str) -> None:
    src = tmp_path / "model.tflite"
    shutil.copy(SHORT_RANGE_TFLITE, src)
    out = src
    if how == "symlink":
        out = tmp_path / "link.safetensors"
        out.symlink_to(src)
    elif how == "hardlink":
        out = tmp_path / "hard.safetensors"
        os.link(src, out)
    code, _, err = run(capsys, "convert", str(src), "-o", str(out))
    assert code == 2 and "error:" in err
    assert src.read_bytes() == SHORT_RANGE_TFLITE.read_bytes()


# -- export --------------------------------------------------------------------------------


def test_export_default_name_never_lands_on_the_original(tmp_path, monkeypatch) -> None:
    """``cd weights && blazeport export face_detection_short_range.tflite --format tflite``."""
    from blazeport.export import default_output, get_format
    from blazeport.specs import spec_named

    shutil.copy(SHORT_RANGE_TFLITE, tmp_path / SHORT_RANGE_TFLITE.name)
    monkeypatch.chdir(tmp_path)
    out = default_output(SHORT_RANGE_TFLITE.name, spec_named("short_range"), get_format("tflite"), fp16=False)
    assert out.name == "face_detection_short_range_export.tflite"
    assert default_output("short_range", spec_named("short_range"), get_format("onnx"), False) == Path("short_range.onnx")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_export_refuses_an_original_or_its_source_before_any_work(tmp_path, capsys, monkeypatch, fmt: str) -> None:
    import blazeport.export as export

    called = []
    monkeypatch.setattr(export, "verify", lambda *a, **k: called.append(a))
    src = tmp_path / "face_detection_short_range.tflite"
    shutil.copy(SHORT_RANGE_TFLITE, src)
    target = src if fmt == "tflite" else tmp_path / "x.onnx"
    if fmt == "onnx":  # a symlink named .onnx that points at Google's original
        target.symlink_to(SHORT_RANGE_TFLITE)
    code, _, err = run(capsys, "export", str(src), "--format", fmt, "-o", str(target))
    assert code == 2 and "destroy the input" in err
    assert src.read_bytes() == SHORT_RANGE_TFLITE.read_bytes() and not called


def test_export_checks_the_target_first_and_leaves_no_temp_file(tmp_path, capsys) -> None:
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    code, _, err = run(capsys, "export", "short_range", "--format", "onnx", "-o", str(folder))
    assert code == 2 and "is a folder" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "export", "short_range", "--format", "onnx", "-o", str(blocker / "sub" / "m.onnx"))
    assert code == 2 and "is a file, not a folder" in err
    assert _leftovers(tmp_path) == [] and _leftovers(folder) == []


def test_export_that_fails_verification_keeps_the_previous_file(tmp_path, capsys, monkeypatch) -> None:
    import blazeport.export as export

    out = tmp_path / "sr.onnx"
    out.write_bytes(b"previous good export")
    monkeypatch.setattr("blazeport.modelfiles.verify.passes", lambda diffs: False)
    code, _, err = run(capsys, "export", "short_range", "--format", "onnx", "-o", str(out), "--json", "--overwrite")
    assert code == 1 and "nothing written" in err
    assert out.read_bytes() == b"previous good export" and _leftovers(tmp_path) == []

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed half way")

    monkeypatch.setitem(export.FORMATS, "onnx", export.FORMATS["onnx"].__class__(
        **{**export.FORMATS["onnx"].__dict__, "exporter": broken}))
    with pytest.raises(RuntimeError):
        export.export("short_range", "onnx", out, overwrite=True)
    assert out.read_bytes() == b"previous good export" and _leftovers(tmp_path) == []


# -- detect --------------------------------------------------------------------------------


def _photo(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((64, 80, 3), value, np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def test_detect_refuses_to_draw_over_its_inputs(tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    a = _photo(photos / "a.jpg", 10)
    before = a.read_bytes()
    code, _, err = run(capsys, "detect", str(photos), "--out", str(photos), "-q")
    assert code == 2 and "is the input folder" in err
    assert a.read_bytes() == before
    code, _, err = run(capsys, "detect", str(a), "--out", str(photos), "-q", "--overwrite")
    assert code == 2 and "input image" in err  # --overwrite replaces drawings, never an input
    assert a.read_bytes() == before


def test_detect_drawings_never_collide(tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", 10)
    _photo(photos / "a.png", 20)
    _photo(photos / "sub" / "a.jpg", 30)
    other = _photo(tmp_path / "elsewhere" / "a.jpg", 40)
    out = tmp_path / "out"
    code, _, _ = run(capsys, "detect", str(photos), str(other), "--out", str(out), "-q")
    assert code == 0
    drawn = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    assert drawn == ["a_jpg.jpg", "a_jpg_2.jpg", "a_png.jpg", "sub/a.jpg"]
    means = sorted(round(float(cv2.imread(str(out / d)).mean())) for d in drawn)
    assert means == [10, 20, 30, 40]  # each drawing is of a different photo


def test_drawing_paths_keep_the_folder_structure(tmp_path) -> None:
    photos = tmp_path / "photos"
    images = [photos / "x" / "1.jpg", photos / "y" / "1.jpg", photos / "2.png"]
    for p in images:
        _photo(p, 0)
    got = drawing_paths([photos], images, tmp_path / "out")
    assert got == [tmp_path / "out" / "x" / "1.jpg", tmp_path / "out" / "y" / "1.jpg", tmp_path / "out" / "2.jpg"]


# -- the mechanism -------------------------------------------------------------------------


def test_staged_output_is_replaced_only_on_commit(tmp_path) -> None:
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    with staged(target) as stage:
        stage.path.write_bytes(b"new, unverified")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(ZeroDivisionError), staged(target) as stage:
        stage.path.write_bytes(b"new")
        1 / 0  # noqa: B018
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with staged(target) as stage:
        stage.path.write_bytes(b"new, verified")
        stage.commit()
    assert target.read_bytes() == b"new, verified"


def test_check_output_and_write_atomic_refuse_clearly(tmp_path) -> None:
    src = tmp_path / "in.tflite"
    src.write_bytes(b"x")
    with pytest.raises(BlazeportError, match="destroy the input"):
        check_output(tmp_path / "." / "in.tflite", [src])
    with pytest.raises(BlazeportError, match="is a folder"):
        check_output(tmp_path, [])
    with pytest.raises(BlazeportError, match="cannot write"):
        write_atomic(tmp_path / "in.tflite" / "child", b"y")
    assert _leftovers(tmp_path) == []


def test_bench_refuses_a_report_over_its_model(tmp_path, capsys) -> None:
    model = tmp_path / "face_detection_short_range.tflite"
    shutil.copy(SHORT_RANGE_TFLITE, model)
    for flag in ("--json", "--plot"):
        code, _, err = run(capsys, "bench", str(model), "--backend", "tflite", flag, str(model))
        assert code == 2 and "destroy the input" in err
    assert model.read_bytes() == SHORT_RANGE_TFLITE.read_bytes()


def test_export_to_an_unwritable_place_fails_before_exporting(tmp_path, capsys, monkeypatch) -> None:
    """A read-only target folder used to fail with a traceback after the whole export ran. Root
    writes through permission bits, so the folder's refusal is simulated where files are created."""
    import tempfile

    import blazeport.export as export

    exported = []
    monkeypatch.setitem(export.FORMATS, "onnx", export.FORMATS["onnx"].__class__(
        **{**export.FORMATS["onnx"].__dict__, "exporter": lambda *a, **k: exported.append(a)}))
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = run(capsys, "export", "short_range", "--format", "onnx", "-o", str(locked / "sr.onnx"))
    assert code == 2 and "Permission denied" in err and err.count("\n") == 1
    assert not exported and list(locked.iterdir()) == []
