"""Every file a distillation run writes goes through the one atomic writer (blazeport.files.write_atomic).

On a full disk, distill used to write config.json with a plain write_text and leave a 0-byte file
behind a traceback. Here the disk "fills" in the middle of a file's bytes (every ``open`` for
writing of that file, or of write_atomic's temporary file beside it, stores half its bytes and then
fails with ENOSPC): the run stops with one BlazeportError naming the file, and no 0-byte or partial
file is left, the previous version (if any) kept whole.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import blazeport
from blazeport.cli import main as cli_main
from blazeport.distill.logs import RunLogs
from blazeport.distill.trainer import TrainConfig, train
from blazeport.errors import BlazeportError

_REAL_OPEN = io.open


class _Filling:
    """A file on a disk that fills up: the first write stores half its bytes, then raises ENOSPC."""

    def __init__(self, f: Any):
        self._f = f

    def write(self, data: Any) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _full_disk(monkeypatch: pytest.MonkeyPatch, full: Callable[[Path], bool]) -> None:
    """From now on, writing a file whose path ``full`` accepts runs out of space half-way."""
    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = _REAL_OPEN(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and full(Path(file)):
            return _Filling(f)
        return f

    monkeypatch.setattr(io, "open", fake_open)  # pathlib's write_text / write_bytes
    monkeypatch.setattr(builtins, "open", fake_open)  # open(), json.dump into it, matplotlib's savefig(path)


def _is(target: Path) -> Callable[[Path], bool]:
    """``target`` itself or write_atomic's temporary file beside it (``.NAME.partial-PID.EXT``)."""
    return lambda p: p.parent == target.parent and (p.name == target.name or p.name.startswith(f".{target.stem}.partial-"))


def _no_partial_files(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            assert ".partial-" not in p.name, p
            assert p.stat().st_size > 0, f"{p} is empty"




def test_a_full_disk_at_config_json_is_one_error_and_no_empty_file(photos: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()  # kept: a folder the run did not create is never removed
    _full_disk(monkeypatch, _is(out / "config.json"))
    rc = cli_main(["distill", "--images", str(photos), "--out", str(out), "--student", "resnet_slim", "--epochs", "1",
                   "--batch-size", "8", "--val-fraction", "0.25", "--threads", "1", "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{out / 'config.json'}: cannot write (No space left on device)" in err
    assert not (out / "config.json").exists()
    _no_partial_files(out)
    assert not (out / ".lock").exists()  # released on the error
    with pytest.raises(BlazeportError, match=r"config\.json: cannot write"):  # the Python API: the same one error
        train(TrainConfig(images=[str(photos)], out=str(out), student="resnet_slim", epochs=1, batch_size=8,
                          val_fraction=0.25, progress=False, threads=1))


def _history(epochs: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_total": 1.0 / e, "train_kl": 0.5 / e, "val_AP50": 0.5, "val_AP": 0.3,
             "val_mae_scores": 0.1, "val_mae_regressors": 0.2} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("name", ["metrics.json", "curves.png"])
def test_a_full_disk_during_an_epoch_keeps_the_previous_file_whole(name: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    out.mkdir()
    logs = RunLogs(out)
    logs.epoch(_history(1), improved=True)
    before = (out / name).read_bytes()
    assert len(before) > 100
    _full_disk(monkeypatch, _is(out / name))
    with pytest.raises(BlazeportError, match=rf"{out / name}: cannot write \(No space left on device\)"):
        logs.epoch(_history(2), improved=False)
    assert (out / name).read_bytes() == before  # epoch 1's file, whole
    monkeypatch.undo()
    logs.writer.close()
    _no_partial_files(out)
    if name == "metrics.json":
        assert json.loads(before) == _history(1)


def test_a_full_disk_at_summary_json_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    out.mkdir()
    logs = RunLogs(out)
    _full_disk(monkeypatch, _is(out / "summary.json"))
    with pytest.raises(BlazeportError, match=r"summary\.json: cannot write"):
        logs.finish({"best": {"val_AP50": 0.5}, "config": {"out": str(out)}})
    monkeypatch.undo()
    assert not (out / "summary.json").exists()
    _no_partial_files(out)


def test_a_full_disk_at_the_lock_file_is_one_error_and_leaves_nothing(photos: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(blazeport, "load", lambda *a, **k: pytest.fail("teacher loaded without a lock"))
    with pytest.raises(BlazeportError, match=rf"{out / '.lock'}: cannot write \(No space left on device\)"):
        train(TrainConfig(images=[str(photos)], out=str(out), student="resnet_slim", epochs=1, progress=False))
    assert not out.exists()


def test_a_full_disk_costs_the_photo_cache_its_entry_not_the_run(photos: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from blazeport.distill.stream import ImageIndex, StreamDataset

    cache = tmp_path / "cache"
    index = ImageIndex([photos])
    ds = StreamDataset(index, list(range(len(index))), 128, seed=0, augment=False, cache_dir=cache)
    written: list[Path] = []
    real_write = blazeport.files.write_atomic
    monkeypatch.setattr(blazeport.files, "write_atomic", lambda p, data: written.append(Path(p)) or real_write(p, data))
    ds[1]
    assert written and [p for p in cache.rglob("*") if p.is_file()] == written  # the entry, through the one writer
    _full_disk(monkeypatch, lambda p: cache in p.parents)
    sample, skipped = ds[0]
    assert sample.shape == (128, 128, 3) and not skipped
    monkeypatch.undo()
    assert [p for p in cache.rglob("*") if p.is_file()] == written[:1]  # no half .npy for the next run to trip on


def test_a_full_disk_while_spooling_held_out_shards_is_one_error(photos: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("webdataset")
    from blazeport.distill import shards, spool

    with tarfile.open(tmp_path / "000.tar", "w") as tar:
        for f in sorted(photos.glob("*.jpg")):
            tar.add(f, arcname=f.name)
    index = shards.ShardIndex([str(tmp_path / "000.tar")], 0.25, 0.0)
    real = spool.tempfile.TemporaryFile
    monkeypatch.setattr(spool.tempfile, "TemporaryFile", lambda *a, **k: _Filling(real(*a, **k)))
    with pytest.raises(BlazeportError, match=rf"cannot spool the held-out samples into {tmp_path / 'spool'} \(No space"):
        spool.Spool(index, "val", 128, str(tmp_path / "spool"))
