"""No output lands on an existing file the run did not make, unless the user asked to overwrite."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.files import check_output, drawing_paths, free_name, staged, write_atomic
from blazeport.pipeline.photos import sample_image_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dl(tmp_path: Path) -> Path:
    """A downloads folder with photo.jpg (someone's photo) and photo.png (the one to detect on)."""
    folder = tmp_path / "dl"
    folder.mkdir()
    shutil.copy(sample_image_path("astronaut"), folder / "photo.png")
    (folder / "photo.jpg").write_bytes(b"a photo the user keeps")
    return folder


def test_a_drawing_never_replaces_a_file_it_was_not_given(dl: Path, capsys) -> None:
    """`detect dl/photo.png --out dl` once replaced dl/photo.jpg with the drawing of the PNG."""
    assert main(["detect", str(dl / "photo.png"), "--out", str(dl), "-q"]) == 0
    assert (dl / "photo.jpg").read_bytes() == b"a photo the user keeps"
    drawn = dl / "photo_2.jpg"
    assert drawn.is_file() and drawn.read_bytes()[:2] == b"\xff\xd8"  # a JPEG drawing under a free name
    assert main(["detect", str(dl / "photo.png"), "--out", str(dl), "-q"]) == 0  # again: yet another free name
    assert (dl / "photo_3.jpg").is_file() and (dl / "photo.jpg").read_bytes() == b"a photo the user keeps"


def test_overwrite_replaces_a_drawing_but_never_an_input(dl: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"old drawing")
    assert main(["detect", str(dl / "photo.png"), "--out", str(out), "-q", "--overwrite"]) == 0
    assert (out / "photo.jpg").read_bytes()[:2] == b"\xff\xd8" and not (out / "photo_2.jpg").exists()
    shutil.copy(dl / "photo.png", dl / "shot.jpg")  # an input whose drawing would land on itself
    assert main(["detect", str(dl / "shot.jpg"), "--out", str(dl), "-q", "--overwrite"]) == 2
    assert (dl / "shot.jpg").read_bytes() == (dl / "photo.png").read_bytes()


def test_drawing_names_skip_taken_ones_without_colliding_with_each_other(tmp_path: Path) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    for name in ("a.png", "a_2.png", "b.png"):
        (photos / name).write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"keep")
    targets = drawing_paths([photos], sorted(photos.iterdir()), out)
    assert [t.name for t in targets] == ["a_3.jpg", "a_2.jpg", "b.jpg"]  # a.jpg is taken, a_2.jpg is a_2.png's
    assert len(set(targets)) == 3
    assert free_name(out / "a.jpg", {out / "a_2.jpg"}) == out / "a_3.jpg"


def test_landmarks_out_inside_the_input_folder_works_every_time(tmp_path: Path, capsys) -> None:
    """Once, the second run took the first run's drawings for inputs and refused them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_image_path("astronaut"), photos / "astronaut.png")
    out = photos / "drawn"
    for run in (1, 2):
        capsys.readouterr()
        assert main(["landmarks", str(photos), "--out", str(out), "--json"]) == 0, run
        result = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in result] == [str(photos / "astronaut.png")], run  # never a drawing
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.jpg", "astronaut_2.jpg"]


def test_model_and_report_outputs_are_refused_before_any_work_when_taken(tmp_path: Path, capsys) -> None:
    taken = tmp_path / "model.onnx"
    taken.write_bytes(b"someone's model")
    assert main(["export", "short_range", "--format", "onnx", "-o", str(taken)]) == 2
    assert "a file of that name exists" in capsys.readouterr().err and taken.read_bytes() == b"someone's model"
    report = tmp_path / "bench.json"
    report.write_text("{}")
    assert main(["bench", "short_range", "--backend", "onnx", "--runs", "1", "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and report.read_text() == "{}"
    with pytest.raises(BlazeportError, match=r"a file of that name exists.*--overwrite"):
        check_output(taken, [], "ONNX export")
    assert check_output(taken, [], "ONNX export", overwrite=True) == taken


def test_convert_refreshes_its_own_output_but_no_other_file(tmp_path: Path) -> None:
    """`blazeport convert weights/X.tflite` writes weights/NAME.safetensors, which a clone already has:
    blazeport's own conversion of the same original is replaced once the new one verifies; any other
    file there needs --overwrite."""
    from blazeport.convert import convert

    src = ROOT / "weights" / "face_detection_short_range.tflite"
    out = tmp_path / "short_range.safetensors"
    shutil.copy(ROOT / "weights" / "short_range.safetensors", out)
    images = blazeport.pipeline.photos.sample_images(("astronaut",))
    report = convert(src, out, images=images)
    assert report["written"] and out.read_bytes() == (ROOT / "weights" / "short_range.safetensors").read_bytes()
    other = tmp_path / "other.safetensors"
    shutil.copy(ROOT / "weights" / "back.safetensors", other)  # blazeport's, but converted from another file
    with pytest.raises(BlazeportError, match="a file of that name exists"):
        convert(src, other, images=images)
    assert other.read_bytes() == (ROOT / "weights" / "back.safetensors").read_bytes()
    assert convert(src, other, images=images, overwrite=True)["written"]


def test_no_clobber_write_leaves_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_atomic(out, b"first", replace=False)
    with pytest.raises(BlazeportError, match="appeared while this run worked"):
        write_atomic(out, b"second", replace=False)
    assert out.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(BlazeportError, match="appeared while this run worked"), staged(out, replace=False) as stage:
        stage.path.write_bytes(b"third")
        stage.commit()
    assert out.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_full_disk_names_the_output_not_the_temporary_file(tmp_path: Path, monkeypatch) -> None:
    from blazeport.modelfiles.weights import load_safetensors, save_safetensors

    module, spec = load_safetensors(ROOT / "weights" / "short_range.safetensors")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "model.safetensors"
    with pytest.raises(BlazeportError) as err, staged(out) as stage:
        save_safetensors(module, spec, stage.path)
    assert str(err.value) == f"{out}: cannot write (No space left on device)."
    assert list(tmp_path.iterdir()) == []
