"""Distillation never unpickles a user's file unsafely, never loses a checkpoint, and refuses bad
arguments before doing anything (issue 9: nothing lost, nothing executed).

One real run (1 epoch, 8 photos) supplies a genuine checkpoint; every other checkpoint here is
built directly as bytes, so each refusal is checked in milliseconds, before any teacher is loaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import blazeport
import blazeport.files
from blazeport.cli import main as cli_main
from blazeport.distill import checkpoint, trainer
from blazeport.distill.checkpoint import CHECKPOINT_MARK, CHECKPOINT_VERSION
from blazeport.distill.trainer import train
from blazeport.errors import BlazeportError
from tests.conftest import small_run

_cfg = small_run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, photos: Path) -> dict[str, Any]:
    """A genuine 1-epoch run, recording every torch.load and write_atomic call it makes."""
    out = tmp_path_factory.mktemp("real") / "run"
    loads: list[dict[str, Any]] = []
    writes: list[Path] = []
    real_load, real_write = torch.load, blazeport.files.write_atomic

    def spy_load(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    def spy_write(path: Path, data: bytes) -> None:
        writes.append(Path(path))
        real_write(path, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy_load)
        mp.setattr(blazeport.files, "write_atomic", spy_write)
        train(_cfg(photos, out))
    return {"out": out, "loads": loads, "writes": writes}


def _copy_run(real_run: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(real_run["out"], out)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_distill(photos: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--images", str(photos), "--out", str(out), "--student", "resnet_slim", "--epochs", "1",
            "--batch-size", "8", "--val-fraction", "0.25", "--limit", "8", "--threads", "1", "--json", *extra]


def _refused_by_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert exit status 2 and exactly one line on stderr, no traceback."""
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# 1. nothing executed: checkpoints are read with weights_only=True


class _Payload:
    """Unpickling this writes a marker file: a stand-in for any code a crafted checkpoint runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_crafted_checkpoint_is_refused_without_running_its_code(photos: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    out = tmp_path / "run"
    out.mkdir()
    state = {"format": CHECKPOINT_MARK, "version": CHECKPOINT_VERSION, "model": {"w": _Payload(marker)}}
    buf = io.BytesIO()
    torch.save(state, buf)  # a torch archive with our keys: only the payload gives it away
    crafted = buf.getvalue()
    for name in ("last.pt", "best.pt"):
        (out / name).write_bytes(crafted)
    err = _refused_by_cli(_cli_distill(photos, out, "--resume"), capsys)
    assert not marker.exists()
    assert str(out / "last.pt") in err and "nothing in it was run" in err and "--out" in err
    assert (out / "last.pt").read_bytes() == crafted
    # a bare pickle (torch's legacy format) with the same payload is refused the same way
    (out / "last.pt").write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    with pytest.raises(BlazeportError, match="nothing in it was run"):
        train(_cfg(photos, out, resume=True))
    assert not marker.exists()
    # the payload is live: a full unpickle (what the trainer used to do) runs it
    torch.load(io.BytesIO(crafted), weights_only=False)
    assert marker.read_text() == "ran"


def test_every_checkpoint_read_is_weights_only_and_resume_works(real_run: dict[str, Any], photos: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = torch.load(real_run["out"] / "last.pt", weights_only=True)  # RNG states stored as plain data
    assert loaded["format"] == CHECKPOINT_MARK and loaded["epoch"] == 0
    assert all(kw.get("weights_only") is True for kw in real_run["loads"]) and real_run["loads"]  # best.pt at the end
    out = _copy_run(real_run, tmp_path)
    calls: list[Any] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    summary = train(_cfg(photos, out, epochs=2, resume=True))
    assert len(summary["final"]) and summary["final"]["epoch"] == 2
    assert calls and all(c is True for c in calls), calls  # last.pt and best.pt at resume, best.pt at the end


# 2. nothing lost: one clear message for a checkpoint that is not ours, the file left as it was


def test_checkpoints_are_written_by_the_one_atomic_writer(real_run: dict[str, Any]) -> None:
    assert not hasattr(trainer, "_atomic_save") and not hasattr(checkpoint, "_atomic_save")
    written = [p.name for p in real_run["writes"]]
    assert "last.pt" in written and "best.pt" in written
    assert not list(real_run["out"].glob("*.tmp"))


def _foreign(kind: str, real_last: bytes) -> bytes:
    buf = io.BytesIO()
    if kind == "truncated":
        return real_last[: len(real_last) // 2]
    if kind == "empty":
        return b""
    if kind == "random bytes":
        return bytes(range(256)) * 8
    if kind == "plain pickle":
        return pickle.dumps({"model": [1, 2, 3]}, protocol=2)
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("notes.txt", "hello")
        return buf.getvalue()
    if kind == "safetensors":
        from safetensors.torch import save

        return save({"w": torch.zeros(3)})
    if kind == "dict without our keys":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, buf)
    elif kind == "other version":
        torch.save({"format": CHECKPOINT_MARK, "version": CHECKPOINT_VERSION + 1}, buf)
    elif kind == "older blazeport":  # version 1 stored numpy's RNG state as it comes, an ndarray
        import numpy as np

        torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}, "epoch": 0}, buf)
    elif kind == "damaged fields":
        ckpt = torch.load(io.BytesIO(real_last), weights_only=True)
        torch.save({**ckpt, "model": "not a state dict"}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "empty", "random bytes", "plain pickle", "zip", "safetensors",
                                  "dict without our keys", "other version", "older blazeport",
                                  "damaged fields"])
def test_foreign_or_broken_checkpoint_is_one_message_and_kept(kind: str, real_run: dict[str, Any], photos: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy_run(real_run, tmp_path)
    bad = _foreign(kind, (out / "last.pt").read_bytes())
    (out / "last.pt").write_bytes(bad)
    before = _snapshot(out)
    monkeypatch.setattr(blazeport, "load", lambda *a, **k: pytest.fail("teacher loaded before the checkpoint was checked"))
    err = _refused_by_cli(_cli_distill(photos, out, "--resume"), capsys)
    assert str(out / "last.pt") in err and "choose another --out" in err
    assert _snapshot(out) == before  # the refused file, and everything beside it, as it was


def test_foreign_best_checkpoint_is_refused_before_an_epoch_could_overwrite_it(real_run: dict[str, Any], photos: Path,
                                                                               tmp_path: Path) -> None:
    out = _copy_run(real_run, tmp_path)
    (out / "best.pt").write_bytes(b"somebody else's model")
    before = _snapshot(out)
    with pytest.raises(BlazeportError, match=r"best\.pt is not a .*checkpoint.*another --out"):
        train(_cfg(photos, out, epochs=2, resume=True))
    assert _snapshot(out) == before


def test_checkpoint_of_another_student_or_teacher_is_refused(real_run: dict[str, Any], photos: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy_run(real_run, tmp_path)
    before = _snapshot(out)
    argv = _cli_distill(photos, out, "--resume")
    argv[argv.index("--student") + 1] = "resnet"
    err = _refused_by_cli(argv, capsys)
    assert "--student resnet_slim" in err and str(out / "last.pt") in err and "another --out" in err
    assert _snapshot(out) == before
    # another teacher: rewrite the saved config as a run of --teacher back would have it
    ckpt = torch.load(out / "last.pt", weights_only=True)
    checkpoint.save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}
                            | {"config": {**ckpt["config"], "teacher": "back"}}, out / "last.pt")
    before = _snapshot(out)
    with pytest.raises(BlazeportError, match=r"--teacher back, not of --student resnet_slim --teacher short_range"):
        train(_cfg(photos, out, resume=True))
    assert _snapshot(out) == before
    # the same teacher under an alias is the same run
    checkpoint.read_checkpoint(real_run["out"] / "last.pt", _cfg(photos, out, teacher="front"))


def test_checkpoint_that_does_not_fit_the_loss_is_refused(real_run: dict[str, Any], photos: Path,
                                                          tmp_path: Path) -> None:
    out = _copy_run(real_run, tmp_path)
    before = _snapshot(out)
    with pytest.raises(BlazeportError, match=r"last\.pt does not fit this run \(saved with --loss 'recipe'"):
        train(_cfg(photos, out, epochs=2, resume=True, loss="recipe+mgd=0.5"))  # mgd adds trainable parameters
    assert _snapshot(out) == before


# 3. arguments checked before anything is written or computed


@pytest.mark.parametrize(("field", "value", "message"), [
    ("epochs", 0, "--epochs must be a whole number of at least 1"),
    ("epochs", -3, "--epochs must be"),
    ("lr", math.nan, "--lr must be a finite number in"),
    ("lr", math.inf, "--lr must be"),
    ("lr", 0.0, "--lr must be"),
    ("lr", -1e-3, "--lr must be"),
    ("batch_size", 0, "--batch-size must be a whole number of at least 1"),
    ("batch_size", -8, "--batch-size must be"),
    ("val_fraction", 0.0, "held-out images choose best.pt"),
    ("val_fraction", -0.1, "--val-fraction must be"),
    ("val_fraction", 1.0, "--val-fraction must be"),
    ("val_fraction", 1.5, "--val-fraction must be"),
    ("limit", 0, "--limit must be"),
    ("limit", -2, "--limit must be"),
    ("temperature", 0.0, "--temperature must be"),
    ("temperature", -1.0, "--temperature must be"),
    ("temperature", math.nan, "--temperature must be"),
    ("alpha", -0.1, "--alpha must be"),
    ("alpha", 1.5, "--alpha must be"),
    ("alpha", math.nan, "--alpha must be"),
    ("seed", -1, "--seed must be"),
    ("threads", 0, "--threads must be"),
    ("images", [], "--images: give at least one"),
    ("student", "resnet_huge", "unknown student 'resnet_huge'"),
    ("teacher", "no_such_model", "unknown model spec 'no_such_model'"),
    ("teacher", "short_range_resnet", "no original .tflite"),
    ("student", "nosuchpackage.nets:tiny", "cannot import nosuchpackage.nets"),
    ("student", "os:system,command=true", "standard-library module, not a backbone"),
    ("student", "timm:surely_not_a_model", "timm"),
    ("test_fraction", 0.9, r"--val-fraction 0.25 \+ --test-fraction 0.9 leave no images"),
    ("test_fraction", -0.1, "--test-fraction must be"),
    ("loss", "recipe+magic", "unknown loss term 'magic'"),
    ("loss", "kl=abc", "the weight must be a finite number"),
    ("loss", "kl=-1", "the weight must be a finite number"),
    ("loss", "kl=0", "no loss term with a weight above 0"),
    ("device", "gpu9", "is not a device"),
    ("checkpoint_every", 0, "--checkpoint-every must be a whole number of at least 1"),
    ("checkpoint_minutes", -1.0, "--checkpoint-minutes must be"),
    ("boxes_alpha", 1.5, "--boxes-alpha must be"),
    ("boxes", "/nonexistent/boxes.json", "--boxes /nonexistent/boxes.json: cannot read the file"),
    ("augment", "ns_turn=2", "--augment ns_turn='2': a probability"),
])
def test_bad_argument_is_one_line_before_anything_runs(field: str, value: Any, message: str, photos: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blazeport, "load", lambda *a, **k: pytest.fail("teacher loaded before arguments were checked"))
    out = tmp_path / "run"
    with pytest.raises(BlazeportError, match=message) as err:
        train(_cfg(photos, out, **{field: value}))
    assert len(str(err.value).splitlines()) == 1
    assert not out.exists()


def test_out_naming_a_file_is_refused_and_the_file_kept(photos: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    err = _refused_by_cli(_cli_distill(photos, target), capsys)
    assert "is a file, not a folder" in err and "choose another --out" in err
    assert target.read_text() == "keep me"
    with pytest.raises(BlazeportError, match="is a file, not a folder"):  # also below a file
        train(_cfg(photos, target / "run"))


# 3b. an empty or unreadable image folder leaves no run folder behind


@pytest.mark.parametrize("content", ["empty", "unreadable", "too few to hold out"])
def test_bad_images_leave_no_run_folder(content: str, photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    kw: dict[str, Any] = {}
    if content == "unreadable":
        (folder / "a.jpg").write_bytes(b"not an image")
    elif content == "too few to hold out":
        folder, kw = photos, {"val_fraction": 0.05}  # none of the 8 photos' content hashes falls below 0.05
    message = {"empty": "no images found", "unreadable": "is a readable image",
               "too few to hold out": "validation images choose best.pt"}[content]
    out = tmp_path / "run"
    with pytest.raises(BlazeportError, match=message):
        train(_cfg(folder, out, **kw))
    assert not out.exists()
