"""A duplicate photo cannot sit in two splits (blazeport.distill.split).

The split used to hash each photo's file *name*, so a copy of a photo under another name could
train the student and then be measured as a "held-out" photo. New runs hash what the photo is, its
bytes; a run recorded without a rule (started before) keeps the name rule when resumed, so its
photos stay where they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch

from blazeport.cli import main as cli_main
from blazeport.distill import checkpoint, trainer
from blazeport.distill.split import CONTENT_RULE, NAME_RULE, file_places, name_hash
from blazeport.distill.stream import ImageIndex
from blazeport.distill.trainer import TrainConfig, train
from blazeport.errors import BlazeportError
from tests.conftest import small_run


def _sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def originals(shared_data: Path) -> list[Path]:
    picks = sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:8]
    return picks + sorted((shared_data / "unlabeled" / "human_samples").glob("*.jpg"))[:8]


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory, originals: list[Path]) -> Path:
    """16 real photos, each also copied under two other names (one in a subfolder): 48 files, 16 photos."""
    folder = tmp_path_factory.mktemp("copies")
    (folder / "sub").mkdir()
    for i, p in enumerate(originals):
        shutil.copy(p, folder / p.name)
        shutil.copy(p, folder / f"copy_{i:02d}.jpg")
        shutil.copy(p, folder / "sub" / f"IMG_{9000 + i}.jpg")
    return folder


def _splits_of_each_photo(paths: list[str], parts: tuple[list[int], ...]) -> dict[str, set[int]]:
    """Each photo (by its bytes) and the splits (0 train, 1 val, 2 test) its copies landed in."""
    where: dict[str, set[int]] = {}
    for s, part in enumerate(parts):
        for i in part:
            where.setdefault(_sha1(paths[i]), set()).add(s)
    return where


def test_copies_under_other_names_always_land_in_the_same_split(with_copies: Path) -> None:
    index = ImageIndex([with_copies])
    paths = [index.paths[i] for i in range(len(index))]
    assert len(paths) == 48
    for val, test in ((0.3, 0.3), (0.2, 0.1), (0.45, 0.2)):
        where = _splits_of_each_photo(paths, index.split(val, test))
        assert len(where) == 16 and all(len(s) == 1 for s in where.values()), where
    # the old rule on the same files does put copies of one photo in different splits: the data shows the bug
    where = _splits_of_each_photo(paths, index.split(0.3, 0.3, rule=NAME_RULE))
    assert any(len(s) > 1 for s in where.values())


def test_the_trainers_split_keeps_copies_together(with_copies: Path) -> None:
    cfg = TrainConfig(images=[str(with_copies)], val_fraction=0.3, test_fraction=0.3)
    assert cfg.split_rule == CONTENT_RULE  # what a new run uses
    data = trainer.Data.load(cfg, 128, torch.device("cpu"))
    index = data.train_set.dataset.paths
    parts = [data.train_set.dataset, data.val_batches.dataset, data.test_batches.dataset]
    where = _splits_of_each_photo([index[i] for i in range(len(index))], tuple(p.indices.tolist() for p in parts))
    assert len(where) == 16 and all(len(s) == 1 for s in where.values())


def test_copies_under_other_keys_or_shards_land_together(originals: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    from blazeport.distill.shards import ShardIndex
    from blazeport.distill.spool import Spool

    for s in range(2):  # shard 1 holds every photo of shard 0 again, under other keys
        with tarfile.open(tmp_path / f"{s:03d}.tar", "w") as tar:
            for i, p in enumerate(originals):
                tar.add(p, arcname=f"{'orig' if s == 0 else 'dup'}_{i:02d}.jpg")
                tar.add(p, arcname=f"{'again' if s == 0 else 'more'}_{i:02d}.jpg")
    index = ShardIndex([str(tmp_path / "{000..001}.tar")], 0.3, 0.3)
    assert index.total == 64
    for i in range(16):
        keys = [(0, f"orig_{i:02d}"), (0, f"again_{i:02d}"), (1, f"dup_{i:02d}"), (1, f"more_{i:02d}")]
        trains = {index.is_train(s, f"{k}.jpg") for s, k in keys}
        assert len(trains) == 1, i  # all four copies train, or none does
    held = {(s, k): place for s, k, place in index.held}
    val = Spool(index, "val", 128)
    assert len(val) == sum(place < 0.3 for place in held.values()) > 0
    spooled = {_read_span(val, j) for j in range(len(val))}
    assert len(val) % 4 == 0 and len(spooled) == len(val) // 4  # each photo's four copies, all in validation
    # the old rule, kept for runs that recorded none, still hashes the __key__ (headers only)
    old = ShardIndex([str(tmp_path / "{000..001}.tar")], 0.3, 0.3, rule=NAME_RULE)
    assert {(s, k) for s, k, _ in old.held} == {(s, k) for s in (0, 1) for k in _keys(tmp_path / f"{s:03d}.tar")
                                               if name_hash(k) < 0.6}


def _keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return [m.name[:-4] for m in tar]


def _read_span(spool: Any, j: int) -> str:
    """The sha1 of the ``j``-th sample's bytes in a held-out spool."""
    off, n = spool.spans[j]
    return hashlib.sha1(os.pread(spool.file.fileno(), int(n), int(off))).hexdigest()


def test_content_hashes_are_cached_by_file_state(originals: list[Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for p in originals[:4]:
        shutil.copy(p, folder / p.name)
        paths.append(str(folder / p.name))
    cache = tmp_path / "cache"
    first = file_places(paths, cache)
    assert first == file_places(paths)  # the cache changes nothing but speed
    assert len(json.loads((cache / "split-sha1.json").read_text())) == 4
    reads: list[str] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(str(self)) or real(self))
    assert file_places(paths, cache) == first and not [r for r in reads if r in paths]  # no photo read again
    Path(paths[0]).write_bytes(originals[5].read_bytes())  # the file changed: hashed again
    again = file_places(paths, cache)
    assert reads and again[0] != first[0] and again[1:] == first[1:]


# resuming an old-rule run keeps its assignment


@pytest.fixture(scope="module")
def photos(tmp_path_factory, originals: list[Path]) -> Path:
    """8 photos whose two rules disagree: the name rule holds out 3 at 0.25, the content rule 1."""
    folder = tmp_path_factory.mktemp("photos8")
    for p in originals[:4] + originals[8:12]:
        shutil.copy(p, folder / p.name)
    return folder


def _cfg(folder: Path, out: Path, **kw: Any) -> TrainConfig:
    return small_run(folder, out, **{"test_fraction": 0.1, "limit": None, **kw})


def _names_by_split(folder: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
                    **kw: Any) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Run ``train`` and return (the file names of each split, the summary)."""
    got: list[Any] = []
    real = trainer.Data.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        got.append(data)
        return data

    monkeypatch.setattr(trainer.Data, "load", spy)
    summary = train(_cfg(folder, out, **kw))
    monkeypatch.undo()
    data = got[0]
    paths = data.train_set.dataset.paths
    names = {which: sorted(Path(paths[int(i)]).name for i in part.indices)
             for which, part in (("train", data.train_set.dataset), ("val", data.val_batches.dataset),
                                 ("test", data.test_batches.dataset))}
    return names, summary


def test_resuming_a_run_recorded_without_a_rule_keeps_the_file_name_split(photos: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    names, _ = _names_by_split(photos, out, monkeypatch)
    assert json.loads((out / "config.json").read_text())["split_rule"] == CONTENT_RULE
    assert torch.load(out / "last.pt", weights_only=True)["config"]["split_rule"] == CONTENT_RULE
    files = sorted(p.name for p in photos.iterdir())
    by_name = {"val": sorted(f for f in files if name_hash(f) < 0.25),
               "test": sorted(f for f in files if 0.25 <= name_hash(f) < 0.35)}
    assert names["val"] != by_name["val"]  # the two rules disagree on these photos, so the test can tell them apart

    # make it a run of an older blazeport: its checkpoints record no rule
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        saved = {k: v for k, v in ckpt.items() if k not in ("format", "version")}
        saved["config"] = {k: v for k, v in saved["config"].items() if k != "split_rule"}
        checkpoint.save_checkpoint(saved, out / name)
    resumed, summary = _names_by_split(photos, out, monkeypatch, epochs=2, resume=True)
    assert resumed["val"] == by_name["val"] and resumed["test"] == by_name["test"]
    assert summary["images"]["val"] == len(by_name["val"]) and summary["final"]["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["split_rule"] == NAME_RULE  # recorded from now on
    assert torch.load(out / "last.pt", weights_only=True)["config"]["split_rule"] == NAME_RULE

    # a checkpoint naming a rule this blazeport does not know is refused, before the teacher loads
    ckpt = torch.load(out / "last.pt", weights_only=True)
    saved = {k: v for k, v in ckpt.items() if k not in ("format", "version")}
    saved["config"] = {**saved["config"], "split_rule": "perceptual-v9"}
    checkpoint.save_checkpoint(saved, out / "last.pt")
    with pytest.raises(BlazeportError, match=r"records the split rule 'perceptual-v9'"):
        train(_cfg(photos, out, epochs=3, resume=True))


def test_the_help_says_which_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sha1 of each photo's bytes" in text and "copy under another name" in text
