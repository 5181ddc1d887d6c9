"""Distillation: students, loss terms, data, and the trainer's guarantees (teacher check, NaN stop,
exact resume after SIGKILL, DDP)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import blazeport
from blazeport.cli import main as cli_main
from blazeport.distill import trainer
from blazeport.distill.dataset import DistillDataset, ImageSet, make_input
from blazeport.distill.loss_terms import ELEMENTARY, TERMS, LossConfig
from blazeport.distill.losses import DistillLoss
from blazeport.distill.trainer import NonFiniteLoss, TrainConfig, train
from blazeport.errors import BlazeportError
from blazeport.models import REGISTERED, build_student
from blazeport.models.resnet import fold_batchnorm
from blazeport.pipeline.anchors import anchors_for
from blazeport.specs import spec_named

SPEC = spec_named("short_range")
ROOT = Path(__file__).resolve().parent.parent  # the checkout these tests belong to


@pytest.fixture(scope="module")
def teacher():
    return blazeport.load("short_range").backend.module


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory, shared_data: Path) -> Path:
    """20 real photos (portraits and group shots) plus one unreadable file."""
    folder = tmp_path_factory.mktemp("unlabeled")
    picks = sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:10]
    picks += sorted((shared_data / "unlabeled" / "human_samples").glob("*.jpg"))[:10]
    for p in picks:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_students_meet_the_head_contract_and_fold_batchnorm(name: str) -> None:
    student = build_student(name, SPEC).eval()
    for m in student.modules():  # non-trivial BN statistics, so folding has something to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    reg, cls = student(x)
    assert reg.shape == (2, 896, 16) and cls.shape == (2, 896, 1)
    assert student.feature_channels == tuple(f.shape[1] for f in student.features(x))
    folded = fold_batchnorm(student)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        for a, b in zip(student(x), folded(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_loss_spec_parsing() -> None:
    cfg = LossConfig.parse("recipe+mgd=0.5", alpha=0.6)
    assert cfg.terms == pytest.approx({"kl": 0.6, "score": 0.4, "box": 1.0, "mgd": 0.5})
    assert LossConfig.parse("hinton+box").terms == {"hinton": 1.0, "box": 1.0}
    with pytest.raises(BlazeportError, match="unknown loss term"):
        LossConfig.parse("recipe+magic")


def test_loss_terms_come_from_one_table(capsys) -> None:
    """The unknown-term error, `blazeport distill --help` and DistillLoss all name the table's terms."""
    with pytest.raises(BlazeportError) as err:
        LossConfig.parse("magic")
    assert str(err.value).endswith(f"terms: {', '.join(TERMS)}")
    with pytest.raises(SystemExit):
        cli_main(["distill", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"optional weights: {', '.join(TERMS)} (e.g." in help_text
    assert set(ELEMENTARY) == set(TERMS) - {"recipe"}
    described = LossConfig.parse("+".join(ELEMENTARY))
    assert described.describe() == "+".join(f"{name}=1" for name in ELEMENTARY) and described.needs_features


def test_loss_terms_vanish_when_student_equals_teacher_and_grow_otherwise(teacher) -> None:
    x = torch.from_numpy(make_input(np.asarray(__import__("skimage.data").data.astronaut()), 128)[None]).permute(0, 3, 1, 2)
    with torch.no_grad():
        t_out = teacher(x)
    loss = DistillLoss(LossConfig.parse("kl+box+score_l1+hard"), anchors_for(SPEC), SPEC)
    same = loss(t_out, t_out)
    for k in ("kl", "box", "score_l1"):
        assert same[k].item() == pytest.approx(0.0, abs=1e-6), k
    # softmax over anchors ignores a common logit offset, so scale the logits as well as shift them
    shifted = (t_out[0] + 3.0, t_out[1] * 0.5 - 2.0)
    worse = loss(shifted, t_out)
    for k in ("kl", "box", "score_l1", "hard"):
        assert worse[k].item() > same[k].item() + 1e-3, k
    assert torch.isfinite(worse["total"])


def test_score_faces_weights_a_missed_borderline_face_far_above_the_plain_mean() -> None:
    """One teacher face at 0.55 among 895 background anchors: missing it (student -4) costs the plain
    per-anchor BCE about 1/900 of its size, score_faces many times more."""
    reg = torch.zeros(1, 896, 16)
    zt = torch.full((1, 896, 1), -10.0)
    zt[0, 100, 0] = 0.2  # sigmoid 0.55: a borderline teacher face
    zs = zt.clone()
    zs[0, 100, 0] = -4.0
    loss = DistillLoss(LossConfig.parse("score+score_faces"), anchors_for(SPEC), SPEC)
    agree, missed = loss((reg, zt), (reg, zt)), loss((reg, zs), (reg, zt))
    plain = missed["score"].item() - agree["score"].item()
    focused = missed["score_faces"].item() - agree["score_faces"].item()
    assert plain > 0 and focused > 10 * plain
    # a false face of the student's own is weighted as well (its score, not the teacher's, sets it)
    false = zt.clone()
    false[0, 500, 0] = 2.0
    extra = loss((reg, false), (reg, zt))
    assert extra["score_faces"].item() - agree["score_faces"].item() > 10 * (extra["score"].item() - agree["score"].item())


def test_hard_pseudo_labels_come_from_teacher_detections(teacher, astronaut) -> None:
    x = torch.from_numpy(make_input(astronaut, 128)[None]).permute(0, 3, 1, 2)
    with torch.no_grad():
        t_reg, t_cls = teacher(x)
    loss = DistillLoss(LossConfig.parse("hard"), anchors_for(SPEC), SPEC)
    (labels,) = loss.pseudo_labels(t_reg, torch.sigmoid(t_cls[..., 0]))
    assert labels.shape == (1, 16)  # one face on the astronaut photo: box + 6 keypoints
    assert 0.3 < labels[0, 0] < 0.4 and labels[0, 2] > labels[0, 0]
    # a photo without faces: no pseudo-labels, and the loss is still finite (all anchors negative)
    blank = torch.full((1, 3, 128, 128), -1.0)
    with torch.no_grad():
        b_reg, b_cls = teacher(blank)
    (none,) = loss.pseudo_labels(b_reg, torch.sigmoid(b_cls[..., 0]))
    assert none.shape == (0, 16)
    assert torch.isfinite(loss((b_reg, b_cls), (b_reg, b_cls))["hard"])


def test_mgd_needs_and_uses_feature_maps(teacher) -> None:
    student = build_student("resnet_slim", SPEC)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    t_feats = teacher.features(x)
    s_feats = student.features(x)
    assert teacher.feature_channels == tuple(f.shape[1] for f in t_feats)
    loss = DistillLoss(LossConfig.parse("mgd"), anchors_for(SPEC), SPEC, student.feature_channels, teacher.feature_channels)
    out = loss(student.head(s_feats), teacher.head(t_feats), s_feats, t_feats)
    out["total"].backward()
    assert out["mgd"].item() > 0
    assert student.stem[0].weight.grad is not None and loss.generator[0].weight.grad is not None
    with pytest.raises(BlazeportError, match="feature maps"):
        DistillLoss(LossConfig.parse("mgd"), anchors_for(SPEC), SPEC)


def test_augmentation_is_seeded_per_sample(tiny_images: Path) -> None:
    images = ImageSet.load([tiny_images], 128)
    assert len(images.images) == 20 and len(images.skipped) == 1  # the broken file is skipped and counted
    ds = DistillDataset(images, list(range(20)), 128, seed=3, augment=True)
    a = ds[5]
    ds.set_epoch(0)
    np.testing.assert_array_equal(a, ds[5])
    ds.set_epoch(1)
    assert np.abs(a - ds[5]).max() > 0.1
    assert a.shape == (128, 128, 3) and a.dtype == np.float32 and a.min() >= -1.0 and a.max() <= 1.0
    plain = DistillDataset(images, list(range(20)), 128, seed=3, augment=False)
    np.testing.assert_array_equal(plain[0], make_input(images.images[0], 128))
    assert ds.order(0, 2) + ds.order(1, 2) and sorted(ds.order(0, 2) + ds.order(1, 2)) == list(range(20))


def test_empty_or_unreadable_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BlazeportError, match="no images found"):
        ImageSet.load([tmp_path], 128)
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(BlazeportError, match="readable"):
        ImageSet.load([tmp_path], 128)
    with pytest.raises(BlazeportError, match=r"No such file or directory"):  # a mistyped folder says so
        ImageSet.load([tmp_path / "missing"], 128)


def _cfg(images: Path, out: Path, **kw):
    base = dict(images=[str(images)], out=str(out), student="resnet_slim", epochs=2, batch_size=8, lr=2e-3,
                val_fraction=0.25, progress=False, threads=1, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_teacher_that_did_not_load_is_refused_before_training(tiny_images: Path, tmp_path: Path, monkeypatch) -> None:
    real_load = blazeport.load

    def broken_load(*args, **kwargs):
        det = real_load(*args, **kwargs)
        with torch.no_grad():
            det.backend.module.blocks[0].pw.weight.zero_()  # as if a layer was never filled
        return det

    monkeypatch.setattr(blazeport, "load", broken_load)
    with pytest.raises(BlazeportError, match="did not load correctly"):
        trainer.train(_cfg(tiny_images, tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_images, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    steps_done = torch.load(out / "last.pt", weights_only=True)["scheduler"]["last_epoch"]
    with pytest.raises(NonFiniteLoss, match=rf"epoch 2, step {steps_done}") as err:
        train(_cfg(tiny_images, out, epochs=2, resume=True, fail_at_step=steps_done))
    assert "last.pt" in str(err.value)
    assert (out / "last.pt").read_bytes() == before
    with pytest.raises(BlazeportError, match="--resume"):
        train(_cfg(tiny_images, out))  # refuses to overwrite a run


def _env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m` / `torchrun -m` subprocess that imports THIS checkout's blazeport,
    whatever the current folder and whichever checkout the interpreter has installed."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = _env(PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-m", "blazeport.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _distill_args(images: Path, out: Path) -> list[str]:
    return ["distill", "--images", str(images), "--out", str(out), "--student", "resnet_slim", "--epochs", "3",
            "--batch-size", "8", "--val-fraction", "0.25", "--threads", "1", "--seed", "1", "--json"]


@pytest.mark.slow
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tiny_images: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = _run_cli(_distill_args(tiny_images, full))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err

    p = _run_cli(_distill_args(tiny_images, cut))
    deadline = time.time() + 240
    while not (cut / "last.pt").exists():  # epoch 1 is checkpointed; kill during epoch 2
        assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut / "summary.json").exists()
    p = _run_cli([*_distill_args(tiny_images, cut), "--resume"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "resumed" in err

    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_total", "val_AP50", "val_mae_scores", "val_mae_regressors"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((cut / "summary.json").read_text())
    assert sa["best"]["val_AP50"] == sb["best"]["val_AP50"]
    # the run's artefacts: curves, TensorBoard events, a loadable student
    assert (cut / "curves.png").stat().st_size > 10_000
    assert list((cut / "tensorboard").glob("events.out.tfevents.*"))
    det = blazeport.load(cut / "student.safetensors")
    assert det.spec.name == "short_range_resnet_slim" and det.spec.input_size == 128


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(tiny_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the Python interpreter")
    env = _env()
    args = _distill_args(tiny_images, out)
    args[args.index("--epochs") + 1] = "1"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29531", "-m", "blazeport.cli", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["images_seen_this_session"] > 0
    assert (out / "student.safetensors").exists()


_KILLED_RUN = """
import sys
from blazeport.distill.trainer import TrainConfig, train
train(TrainConfig(images=[sys.argv[1]], out=sys.argv[2], student="resnet_slim", epochs=2, batch_size=4, lr=2e-3,
                  val_fraction=0.25, progress=False, threads=1, seed=1, checkpoint_every=1,
                  resume=sys.argv[3] == "resume", kill_at_step=int(sys.argv[4]) if len(sys.argv) > 4 else None))
"""


@pytest.mark.slow
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_ends_like_an_uninterrupted_run(tiny_images: Path,
                                                                                          tmp_path: Path) -> None:
    """--checkpoint-every: a run killed (a real SIGKILL, right after the checkpoint of step 1 of epoch 2) and resumed
    from inside that epoch ends with the metrics of a run that was never interrupted nor checkpointed inside epochs."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(tiny_images, full, batch_size=4))  # no mid-epoch checkpoints at all
    steps = torch.load(full / "last.pt", weights_only=True)["scheduler"]["last_epoch"] // 2
    assert steps >= 3  # the kill lands inside epoch 2, not at its end

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tiny_images), str(cut), *args], env=_env(),
                              capture_output=True, text=True, timeout=300)

    killed = run("new", str(steps + 1))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = torch.load(cut / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["position"]["step"], len(ckpt["history"])) == (1, 1, 1)  # epoch 2 (0-based 1), step 1
    assert ckpt["version"] == 3 and not (cut / "summary.json").exists()
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {cut} at epoch 2, step 1 of {steps}" in resumed.stderr

    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_total", "train_kl", "val_AP50", "val_mae_scores", "val_mae_regressors"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    assert torch.load(cut / "last.pt", weights_only=True)["position"] is None  # the run ended on an epoch-end checkpoint


def test_keep_every_leaves_a_loadable_student_per_kept_epoch(tiny_images: Path, tmp_path: Path) -> None:
    """--keep-every N: the student after every N-th epoch, as a file detect/eval load; the epoch best.pt chose is
    the same weights as student.safetensors, and a later epoch is not."""
    from safetensors.numpy import load_file

    out = tmp_path / "run"
    summary = train(_cfg(tiny_images, out, epochs=3, keep_every=1))
    kept = sorted(p.name for p in (out / "epochs").iterdir())
    assert kept == ["student_e0001.safetensors", "student_e0002.safetensors", "student_e0003.safetensors"]
    final = load_file(out / "student.safetensors")
    same = {e: all(np.array_equal(v, load_file(out / "epochs" / f"student_e{e:04d}.safetensors")[k])
                   for k, v in final.items()) for e in (1, 2, 3)}
    assert same == {e: e == summary["best_epoch"] for e in (1, 2, 3)}
    detections = blazeport.load(out / "epochs" / "student_e0002.safetensors").detect(
        str(sorted(tiny_images.glob("*.jpg"))[0]))
    assert isinstance(detections, list)
    with pytest.raises(BlazeportError, match="--keep-every"):
        train(_cfg(tiny_images, tmp_path / "bad", keep_every=0))
