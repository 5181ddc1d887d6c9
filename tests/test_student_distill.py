"""A user's own backbone, end to end: one distill command, then detect, export (verified) and bench
with no extra flags; and a bad backbone stops the run before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blazeport
from blazeport.distill.trainer import TrainConfig, train
from blazeport.errors import BlazeportError
from blazeport.export import export

ROOT = Path(__file__).resolve().parent.parent
USER_STUDENT = "examples.mnv3_backbone:mnv3_small,width=0.5"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for p in sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:12]:
        shutil.copy(p, folder / p.name)
    return folder


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "blazeport.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_user_backbone_distills_detects_exports_and_benchmarks(photos: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    r = _cli(["distill", "--student", USER_STUDENT, "--images", str(photos), "--out", str(out), "--epochs", "1",
              "--batch-size", "4", "--val-fraction", "0.25", "--test-fraction", "0.25", "--threads", "1", "--json"], ROOT)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["student"] == USER_STUDENT and summary["images"]["test"] > 0 and "test_AP50" in summary["test"]
    bands = summary["test"]["test_breakdown"]["by_face_width"]  # where the student fails, on the test split
    assert set(bands) == {"under_15pct", "15_to_40pct", "over_40pct"}
    assert sum(b["references"] for b in bands.values()) == summary["test"]["test_faces"]
    weights = out / "student.safetensors"

    monkeypatch.chdir(ROOT)  # where the user's module imports from
    with pytest.raises(BlazeportError, match="--trust-code"):
        blazeport.load(weights)  # the file names the user's module: refused before it is imported
    det = blazeport.load(weights, trust_code=True)  # the user's word: the file says how to rebuild the backbone
    assert det.spec.name == "short_range_mnv3_small" and det.spec.teacher == "short_range"
    faces = det.detect(np.full((200, 300, 3), 128, np.uint8))
    assert isinstance(faces, list)
    for fmt in ("onnx", "tflite"):
        report = export(weights, fmt, tmp_path / f"student.{fmt}", trust_code=True)
        assert report["ok"], report  # verified against the PyTorch student on real photos
        assert blazeport.load(tmp_path / f"student.{fmt}", backend=fmt).spec.name == det.spec.name
    r = _cli(["bench", str(weights), "--backend", "torch,onnx", "--runs", "5", "--warmup", "1", "--no-baselines",
              "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "bench.json"), "--trust-code"], ROOT)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {row["backend"] for row in rows} == {"torch", "onnx"} and all(row["stats"]["p50"] > 0 for row in rows)


@pytest.mark.parametrize(("student", "message"), [
    ("examples.mnv3_backbone:nope", "examples.mnv3_backbone has no 'nope'"),
    ("examples.mnv3_backbone:mnv3_small,depth=2", r"calling mnv3_small\(depth=2\) raised TypeError"),
    ("timm:surely_not_a_model", "timm"),
])
def test_a_bad_student_stops_before_anything_is_written(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        student: str, message: str) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    with pytest.raises(BlazeportError, match=message):
        train(TrainConfig(images=[str(photos)], out=str(out), student=student, epochs=1, progress=False, threads=1))
    assert not out.exists()


@pytest.mark.slow
def test_the_back_teacher_distills_like_short_range(photos: Path, tmp_path: Path) -> None:
    """--teacher back: 256 px, heads at strides 16 and 32; the student reloads with the teacher's spec."""
    out = tmp_path / "back"
    summary = train(TrainConfig(teacher="back", student="mobilenet_slim", images=[str(photos)], out=str(out), epochs=1,
                                batch_size=4, val_fraction=0.25, test_fraction=0.25, progress=False, threads=1))
    assert summary["teacher"] == "back" and summary["images"]["test"] > 0
    det = blazeport.load(out / "student.safetensors")
    assert det.spec.input_size == 256 and det.spec.num_anchors == 896 and det.spec.teacher == "back"
    assert det.spec.name == "back_mobilenet_slim"


def test_init_loads_a_students_weights_or_says_why_not(tmp_path: Path) -> None:
    from blazeport.distill.config import init_weights
    from blazeport.models import build_student
    from blazeport.specs import spec_named

    shipped = Path(blazeport.__file__).resolve().parent.parent / "weights" / "short_range_resnet.safetensors"
    spec = spec_named("short_range")
    student = build_student("resnet", spec)
    init_weights(student, str(shipped), spec)
    shipped_module = blazeport.load(shipped).backend.module
    for (k, a), b in zip(student.state_dict().items(), shipped_module.state_dict().values(), strict=True):
        assert a.equal(b), k
    with pytest.raises(BlazeportError, match=r"tensors do not fit --student .* pass the --student it was trained as \(resnet\)"):
        init_weights(build_student("resnet_slim", spec), str(shipped), spec)
    with pytest.raises(BlazeportError, match="a student of short_range, not of --teacher back"):
        init_weights(build_student("resnet", spec_named("back")), str(shipped), spec_named("back"))
    with pytest.raises(BlazeportError, match="no such weights file"):
        init_weights(student, str(tmp_path / "none.safetensors"), spec)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("zoom", (2.0, 1.0), "--zoom must be MIN,MAX"),
    ("zoom", (0.0, 1.0), "--zoom must be MIN,MAX"),
    ("augment", "closeup=0.2,glare=0.1", "--augment: unknown term 'glare'"),
    ("augment", "grey=1.5", r"--augment grey='1.5': a probability in \[0, 1\]"),
    ("init", "weights/short_range_resnet.safetensors", "tensors do not fit --student"),
])
def test_bad_init_or_zoom_stops_before_anything_is_written(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           field: str, value, message: str) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    with pytest.raises(BlazeportError, match=message):
        train(TrainConfig(images=[str(photos)], out=str(out), student="mobilenet", epochs=1, progress=False, threads=1,
                          **{field: value}))
    assert not out.exists()


def test_init_from_the_file_the_run_would_write_is_refused(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shipped = ROOT / "weights" / "short_range_resnet.safetensors"
    (out / "student.safetensors").write_bytes(shipped.read_bytes())
    before = (out / "student.safetensors").read_bytes()
    with pytest.raises(BlazeportError, match=r"is the student\.safetensors this run writes at its end"):
        train(TrainConfig(images=[str(photos)], out=str(out), student="resnet", init=str(out / "student.safetensors"),
                          epochs=1, progress=False, threads=1))
    assert (out / "student.safetensors").read_bytes() == before and sorted(p.name for p in out.iterdir()) == [
        "student.safetensors"]
