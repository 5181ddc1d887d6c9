"""``tools/ship_student.py`` on a copy of the bundle: the student, its record and its export are
replaced together, and the manifest agrees with all three, since a bundled file opens only if it does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import blazeport
from blazeport.distill.trainer import TrainConfig, train
from blazeport.files import sha256_of
from blazeport.modelfiles import bundle
from blazeport.modelfiles.weights import load_safetensors
from blazeport.specs import WEIGHTS_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bundle_manifest
import ship_student

NAME = "short_range_resnet"


@pytest.fixture
def fake_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``bundled/weights`` with the shipped student's three files, and a manifest that lists them."""
    root = tmp_path / "bundled"
    (root / "weights").mkdir(parents=True)
    for suffix in (".safetensors", ".json", ".tflite"):
        shutil.copy(WEIGHTS_DIR / f"{NAME}{suffix}", root / "weights" / f"{NAME}{suffix}")
    monkeypatch.setattr(bundle, "BUNDLE_DIR", root)
    monkeypatch.setattr(bundle, "MANIFEST", root / "SHA256SUMS")
    monkeypatch.setattr(ship_student, "WEIGHTS_DIR", root / "weights")
    assert bundle_manifest.main([]) == 0
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    photos = tmp_path_factory.mktemp("photos")
    for p in sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:12]:
        shutil.copy(p, photos / p.name)
    out = tmp_path_factory.mktemp("ship") / "run"
    train(TrainConfig(teacher="short_range", student="resnet", images=[str(photos)], out=str(out), epochs=2,
                      batch_size=4, val_fraction=0.25, test_fraction=0.25, progress=False, threads=1, keep_every=1))
    return out


@pytest.mark.slow
def test_a_kept_epoch_ships_with_its_export_and_a_manifest_that_opens_them(fake_bundle: Path, run: Path,
                                                                           astronaut) -> None:
    weights = fake_bundle / "weights"
    old = {p.name: sha256_of(p) for p in weights.iterdir()}
    kept = run / "epochs" / "student_e0001.safetensors"
    assert ship_student.main([str(run), NAME, "--student", str(kept), "--command", "distill ..."]) == 0

    shipped, spec = load_safetensors(weights / f"{NAME}.safetensors")
    student, _ = load_safetensors(kept)
    assert spec.name == NAME
    for a, b in zip(shipped.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the kept epoch, not best.pt's
    record = json.loads((weights / f"{NAME}.json").read_text())
    assert record["command"] == "distill ..." and record["shipped_student"] == "epochs/student_e0001.safetensors"
    for suffix in (".safetensors", ".json", ".tflite"):
        assert sha256_of(weights / f"{NAME}{suffix}") != old[f"{NAME}{suffix}"], suffix  # all three replaced
    assert bundle_manifest.main(["--check"]) == 0  # and listed
    # Both open (the manifest agrees) and the export is the new student's, not the old one's.
    torch_faces = blazeport.load(weights / f"{NAME}.safetensors", score_threshold=0.05).detect(astronaut)
    tflite_faces = blazeport.load(weights / f"{NAME}.tflite", backend="tflite", score_threshold=0.05).detect(astronaut)
    assert torch_faces and len(torch_faces) == len(tflite_faces)
    for a, b in zip(torch_faces, tflite_faces, strict=True):
        assert abs(a.score - b.score) < 1e-4


def test_a_student_of_another_teacher_is_refused_and_nothing_changes(fake_bundle: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(WEIGHTS_DIR / "full_range_sparse_mobilenet.safetensors", run / "student.safetensors")
    (run / "summary.json").write_text("{}")
    before = {p.name: sha256_of(p) for p in (fake_bundle / "weights").iterdir()}
    with pytest.raises(SystemExit, match="not what short_range_resnet names"):
        ship_student.main([str(run), NAME])
    assert {p.name: sha256_of(p) for p in (fake_bundle / "weights").iterdir()} == before
    assert bundle_manifest.main(["--check"]) == 0
