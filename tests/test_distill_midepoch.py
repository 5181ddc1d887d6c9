"""Checkpoints inside an epoch (``--checkpoint-every`` / ``--checkpoint-minutes``, blazeport.distill.midepoch): when
they are due, and that an epoch resumed at step k yields exactly the batches k, k+1, ... of the uninterrupted epoch,
for folders and for WebDataset shards read by several workers. The end-to-end SIGKILL test is in test_distill.py."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from blazeport.distill.dataset import AugmentConfig
from blazeport.distill.midepoch import CheckpointCadence, Position, round_robin_order
from blazeport.distill.shards import ShardIndex, ShardTrain
from blazeport.distill.stream import FolderTrain, ImageIndex, StreamDataset
from blazeport.errors import BlazeportError


def test_checkpoints_are_due_every_n_steps_or_after_m_minutes_never_at_an_epoch_end() -> None:
    now = [0.0]
    steps = CheckpointCadence(every=3, minutes=None, clock=lambda: now[0])
    assert [g for g in range(1, 13) if steps.due(g, (g - 1) % 5 + 1, 5)] == [3, 6, 9, 12]
    assert not steps.due(15, 5, 5)  # the epoch's last step: the epoch-end checkpoint follows
    timed = CheckpointCadence(every=None, minutes=2.0, clock=lambda: now[0])
    now[0] = 119.0
    assert not timed.due(1, 1, 10)
    now[0] = 120.0
    assert timed.due(2, 2, 10)
    timed.written()
    now[0] = 200.0
    assert not timed.due(3, 3, 10)  # counted from the last checkpoint, whichever kind
    assert not CheckpointCadence(None, None).active and CheckpointCadence(5, None).active


def test_the_shard_workers_take_turns_and_one_that_ran_dry_is_skipped() -> None:
    assert round_robin_order([2, 2]) == [0, 1, 0, 1]
    assert round_robin_order([1, 4, 2]) == [0, 1, 2, 1, 2, 1, 1]


def test_a_resume_that_would_cut_the_epoch_differently_is_refused_in_one_message() -> None:
    pos = Position(epoch=1, step=2, sums={"total": 1.0}, seconds=3.0, steps_per_epoch=5, world=1, batch=8)
    pos.check_fits("last.pt", 5, 1, 8, None)
    with pytest.raises(BlazeportError, match=r"middle of epoch 2 \(step 2 of 5\).*batch per process 8 then, 4 now"):
        pos.check_fits("last.pt", 10, 1, 4, None)
    assert Position.problem(pos.to_dict()) is None and Position.problem(None) is None
    assert Position.problem({**pos.to_dict(), "step": 5}) == "position malformed"  # a step past the epoch's end
    assert Position.problem({"epoch": "one"}) == "position malformed"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    for p in sorted((shared_data / "unlabeled" / "human_samples").glob("*.jpg"))[:12]:
        shutil.copy(p, folder / p.name)
    return folder


def _batches(it) -> list[torch.Tensor]:
    return [x.clone() for x, _ in it]


def test_a_folder_epoch_resumed_at_step_k_yields_its_batches_from_k(pictures: Path) -> None:
    index = ImageIndex([pictures])
    ds = StreamDataset(index, list(range(len(index))), 128, 3, True, AugmentConfig())
    train = FolderTrain(ds, 0)
    whole = _batches(train.epoch(1, 0, 1, 3))
    assert len(whole) == 4
    tail = _batches(train.epoch(1, 0, 1, 3, start=2))
    assert len(tail) == 2 and all(torch.equal(a, b) for a, b in zip(whole[2:], tail, strict=True))


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory, pictures: Path) -> Path:
    """12 photos in 3 shards of 2, 4 and 6 samples (unequal: workers run dry at different times)."""
    folder = tmp_path_factory.mktemp("uneven")
    files = sorted(pictures.glob("*.jpg"))
    for s, (lo, hi) in enumerate(((0, 2), (2, 6), (6, 12))):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for f in files[lo:hi]:
                data = f.read_bytes()
                info = tarfile.TarInfo(f"{f.stem}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                meta = json.dumps({"k": f.stem}).encode()
                info = tarfile.TarInfo(f"{f.stem}.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
    return folder


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers", [0, 3])
def test_a_shard_epoch_resumed_at_step_k_yields_exactly_its_batches_from_k(uneven_shards: Path, workers: int) -> None:
    pytest.importorskip("webdataset")
    index = ShardIndex([str(uneven_shards / "{000..002}.tar")], val_fraction=0.2, test_fraction=0.0)
    train = ShardTrain(index, 128, 0, AugmentConfig(), workers)
    whole = _batches(train.epoch(0, 0, 1, 2))
    assert len(whole) == train.steps(0, 1, 2) >= 4
    for k in (1, 3):
        tail = _batches(train.epoch(0, 0, 1, 2, start=k))
        assert len(tail) == len(whole) - k
        assert all(torch.equal(a, b) for a, b in zip(whole[k:], tail, strict=True)), k
