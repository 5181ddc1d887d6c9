"""Streaming distillation data (issue 13): photos decoded in loader workers, never all in memory; WebDataset
tar shards, each DDP rank its own; resume at an epoch boundary; 2-node torchrun with a localhost rendezvous."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from blazeport.distill.config import TrainConfig
from blazeport.distill.dataset import AugmentConfig, DistillDataset, ImageSet, to_unit
from blazeport.distill.shards import ShardIndex, ShardTrain, quotas
from blazeport.distill.split import content_hash
from blazeport.distill.spool import Spool
from blazeport.distill.stream import FolderTrain, HeldOut, ImageIndex, StreamDataset
from blazeport.distill.trainer import train
from blazeport.errors import BlazeportError

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("webdataset", reason="WebDataset shards need the webdataset package (a dependency)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data: Path) -> Path:
    """16 real photos (portraits and group shots) plus one unreadable file."""
    folder = tmp_path_factory.mktemp("photos")
    picks = sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:8]
    picks += sorted((shared_data / "unlabeled" / "human_samples").glob("*.jpg"))[:8]
    for p in picks:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory, photos: Path) -> Path:
    """The same 16 photos as 4 WebDataset shards of 4 samples (key = file stem), plus a broken sample in shard 3."""
    folder = tmp_path_factory.mktemp("shards")
    files = sorted(p for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    for s in range(4):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            members = [(f.stem, f.read_bytes()) for f in files[s * 4 : s * 4 + 4]]
            if s == 3:
                members.append(("broken_sample", b"not an image"))
            for key, data in members:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                meta = json.dumps({"source": key}).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
    return folder


def test_the_dataset_holds_paths_not_photos(photos: Path, tmp_path: Path) -> None:
    """Memory cannot grow with the number of photos: the dataset (what every worker copies) holds paths only,
    a few dozen bytes each, before and after every sample was decoded; a decoded photo is ~200 KB."""
    many = tmp_path / "many"
    many.mkdir()
    originals = sorted(photos.glob("*.jpg"))
    for i in range(300):  # 300 symlinks to the same 17 files: list_images follows them
        (many / f"{i:04d}_{originals[i % len(originals)].name}").symlink_to(originals[i % len(originals)])
    sizes = {}
    for folder in (photos, many):
        index = ImageIndex([folder])
        ds = StreamDataset(index, list(range(len(index))), 128, seed=0, augment=True, memory_mb=0)
        before = len(pickle.dumps(ds))
        for i in range(0, len(ds), 1 if len(ds) < 100 else 15):
            sample, _ = ds[(0, i)]
            assert sample.shape == (128, 128, 3) and sample.dtype == np.uint8
        after = len(pickle.dumps(ds))
        assert after == before < 250 * len(index) + 2000  # nothing decoded stayed behind
        sizes[len(index)] = after
    (n_small, small), (n_big, big) = sorted(sizes.items())
    assert n_big == 300
    per_photo = (big - small) / (n_big - n_small)
    assert per_photo < 250, per_photo  # the path's bytes and an offset; a decoded photo would be ~196,000
    # the bounded memory cache does hold photos, but never more than its budget
    ds = StreamDataset(ImageIndex([many]), list(range(300)), 128, seed=0, augment=True, memory_mb=1)
    for i in range(0, 300, 15):
        ds[(0, i)]
    assert 0 < ds._memory_used <= 2**20


def test_streamed_samples_equal_the_in_memory_ones_whatever_the_workers(photos: Path) -> None:
    """The same (seed, epoch, index) sample, bit for bit, decoded in memory (the old path), in this process or
    in 2 workers; an unreadable file is counted and the next photo stands in, so every batch keeps its size."""
    index = ImageIndex([photos])
    names = [Path(index.paths[i]).name for i in range(len(index))]
    readable = [i for i, n in enumerate(names) if n != "broken.jpg"]
    old = ImageSet.load([photos], 128)
    assert len(readable) == len(old.images) == 16  # the old path numbered readable photos only: renumber as the index
    by_index = [old.images[readable.index(i)] if i in readable else old.images[0] for i in range(len(names))]
    old = ImageSet([Path(n) for n in names], by_index, [])
    aug = AugmentConfig()
    mem = DistillDataset(old, readable, 128, seed=3, augment=True, aug=aug)
    ds = StreamDataset(index, readable, 128, seed=3, augment=True, aug=aug)
    mem.set_epoch(2)
    for i in (0, 5, 15):
        np.testing.assert_array_equal(to_unit(ds[(2, i)][0]), mem[i])

    batches = {}
    for workers in (0, 2):
        full = StreamDataset(index, list(range(len(index))), 128, seed=3, augment=True, aug=aug)
        loader = FolderTrain(full, workers)
        got = []
        for epoch in (0, 1):
            got.append([(x.clone(), sk) for x, sk in loader.epoch(epoch, rank=0, world=1, batch=4)])
        batches[workers] = got
    for e in (0, 1):
        assert len(batches[0][e]) == len(batches[2][e]) == 17 // 4
        for (a, sa), (b, sb) in zip(batches[0][e], batches[2][e], strict=True):
            assert torch.equal(a, b) and sa == sb and a.shape == (4, 128, 128, 3)
    assert not torch.equal(batches[0][0][0][0], batches[0][1][0][0])  # another epoch, other samples
    skipped = {f for e in (0, 1) for _, sk in batches[0][e] for f in sk}
    assert len(skipped) == 1 and "broken.jpg" in next(iter(skipped))


def test_disk_cache_is_keyed_by_file_state_and_never_beside_the_photos(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    cache = tmp_path / "cache"
    index = ImageIndex([folder])
    ds = StreamDataset(index, list(range(len(index))), 128, seed=0, augment=False, cache_dir=cache)
    first = [ds[i][0] for i in range(4)]
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 4 and not list(folder.rglob("*.npy"))
    again = StreamDataset(index, list(range(len(index))), 128, seed=0, augment=False, cache_dir=cache)
    for i in range(4):
        np.testing.assert_array_equal(again[i][0], first[i])
    assert sorted(cache.rglob("*.npy")) == entries  # read back, not rewritten
    target = Path(index.paths[0])
    target.write_bytes(next(p for p in sorted(photos.glob("*.jpg")) if p.name != target.name).read_bytes())
    again[0]  # the file changed: a new entry, not the stale one
    assert len(list(cache.rglob("*.npy"))) == 5
    with pytest.raises(BlazeportError, match="never written beside your photos"):
        TrainConfig(images=[str(folder)], cache_dir=str(folder / "cache"), out=str(tmp_path / "run"))._check_out()


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # 3 on a 2-core host, on purpose
def test_shards_split_by_key_and_each_rank_reads_its_own(shards: Path) -> None:
    spec = [str(shards / "{000..003}.tar")]
    index = ShardIndex(spec, val_fraction=0.25, test_fraction=0.1)
    places = []  # each sample's place: a hash of its image bytes (the rule of new runs), not of its __key__
    for s in range(4):
        with tarfile.open(shards / f"{s:03d}.tar") as tar:
            places += [content_hash(tar.extractfile(m).read()) for m in tar if m.name.endswith(".jpg")]
    assert index.total == len(places) == 17
    assert int(index.train_counts.sum()) == sum(h >= 0.35 for h in places)
    val = Spool(index, "val", 128)
    assert len(val) == sum(h < 0.25 for h in places)
    assert len(Spool(index, "test", 128)) == sum(0.25 <= h < 0.35 for h in places)
    for epoch in (0, 1):
        mine = [set(index.shards_of(epoch, 0, r, 2)) for r in range(2)]
        assert not mine[0] & mine[1] and mine[0] | mine[1] == {0, 1, 2, 3}
    assert index.shards_of(0, 0, 0, 2) != index.shards_of(1, 0, 0, 2) or index.shards_of(2, 0, 0, 2) != \
        index.shards_of(0, 0, 0, 2)  # the shard order moves with the epoch

    # two ranks: the same number of steps, disjoint samples; an epoch's stream is a pure function of
    # (seed, epoch, world, workers): what resuming at an epoch boundary relies on
    aug = AugmentConfig()
    steps = ShardTrain(index, 128, 0, aug, 0).steps(0, 2, 2)
    assert steps >= 1
    seen = []
    for rank in (0, 1):
        a = [(x.clone(), sk) for x, sk in ShardTrain(index, 128, 0, aug, 2).epoch(1, rank, 2, 2)]
        b = [(x.clone(), sk) for x, sk in ShardTrain(index, 128, 0, aug, 2).epoch(1, rank, 2, 2)]
        assert len(a) == len(b) == steps
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
        seen.append({x[i].numpy().tobytes() for x, _ in a for i in range(len(x))})
    assert not seen[0] & seen[1]
    # 3 workers on 4 shards of unequal size: still every training sample once, in full batches
    one = ShardTrain(index, 128, 0, aug, 3)
    got = list(one.epoch(0, 0, 1, 2))
    assert len(got) == one.steps(0, 1, 2) == int(index.train_counts.sum()) // 2 and all(len(x) == 2 for x, _ in got)
    assert quotas(9, [2, 4, 10]) == [2, 4, 3] and sum(quotas(7, [3, 3, 3])) == 7


@pytest.mark.slow
def test_shard_run_resumed_at_an_epoch_boundary_ends_like_an_uninterrupted_one(shards: Path, tmp_path: Path) -> None:
    base = dict(images=[str(shards / "{000..003}.tar")], student="resnet_slim", batch_size=4, lr=2e-3,
                val_fraction=0.25, progress=False, threads=1, seed=1, workers=2)
    full = train(TrainConfig(out=str(tmp_path / "full"), epochs=2, **base))
    train(TrainConfig(out=str(tmp_path / "cut"), epochs=1, **base))
    cut = train(TrainConfig(out=str(tmp_path / "cut"), epochs=2, resume=True, **base))
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_total", "val_AP50", "val_mae_scores", "val_mae_regressors"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    assert content_hash(b"not an image") >= 0.35  # broken_sample's bytes: a training sample, met (and counted) every epoch
    assert full["images"]["skipped_unreadable"] == cut["images"]["skipped_unreadable"] == 1
    assert full["images"]["train"] + full["images"]["val"] + full["images"]["test"] == 17


@pytest.mark.slow
def test_shard_run_resumed_inside_an_epoch_ends_like_an_uninterrupted_one(shards: Path, tmp_path: Path) -> None:
    """--checkpoint-every on shards read by 2 workers: a run stopped inside epoch 2 (a NaN injected one step after a
    mid-epoch checkpoint; the checkpoint is kept) and resumed from it ends with the uninterrupted run's metrics."""
    from blazeport.distill.trainer import NonFiniteLoss

    base = dict(images=[str(shards / "{000..003}.tar")], student="resnet_slim", batch_size=2, lr=2e-3,
                val_fraction=0.25, progress=False, threads=1, seed=1, workers=2, epochs=2)
    train(TrainConfig(out=str(tmp_path / "full"), **base))
    steps = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["scheduler"]["last_epoch"] // 2
    assert steps >= 3
    with pytest.raises(NonFiniteLoss):
        train(TrainConfig(out=str(tmp_path / "cut"), checkpoint_every=1, fail_at_step=steps + 2, **base))
    position = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["step"], position["workers"]) == (1, 2, 2)
    shutil.copytree(tmp_path / "cut", tmp_path / "other")
    with pytest.raises(BlazeportError, match=r"middle of epoch 2 .*--workers 2 then, 1 now"):
        train(TrainConfig(out=str(tmp_path / "other"), resume=True, **{**base, "workers": 1}))
    train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base))
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_total", "val_AP50", "val_mae_scores", "val_mae_regressors"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_reads_disjoint_shards_and_keeps_weights_in_step(shards: Path, tmp_path: Path) -> None:
    """Two `torchrun --nnodes 2` launches on this machine, a c10d rendezvous on localhost, gloo: both finish,
    their ranks read disjoint shards, end with the same parameters, and only rank 0 writes the run."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the Python interpreter")
    port = _free_port()
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        args = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"blazeport-{port}", "--node-rank", str(node),
                "-m", "blazeport.cli", "distill", "--images", str(shards / "{000..003}.tar"),
                "--out", str(tmp_path / f"node{node}"), "--student", "resnet_slim", "--epochs", "1", "--batch-size", "4",
                "--val-fraction", "0.25", "--threads", "1", "--seed", "1", "--workers", "1", "--json"]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    logs = "\n".join(err for _, err in outs)
    shard_lines = re.findall(r"rank (\d) of 2, epoch 1: \d shard\(s\) (.*)", logs)
    assert sorted(r for r, _ in shard_lines) == ["0", "1"]
    read = [set(names.split()) for _, names in shard_lines]
    assert not read[0] & read[1] and len(read[0] | read[1]) == 4
    digests = dict(re.findall(r"rank (\d) of 2: \d+ steps, student parameters sha256 ([0-9a-f]+)", logs))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    written = [d for d in (tmp_path / "node0", tmp_path / "node1") if (d / "summary.json").exists()]
    assert len(written) == 1  # rank 0's node wrote the run; the other rank wrote nothing
    summary = json.loads((written[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and (written[0] / "student.safetensors").exists()
    assert not any(p.exists() for p in (tmp_path / "node0", tmp_path / "node1") if p not in written)


def test_heldout_batches_are_decoded_on_demand(photos: Path) -> None:
    index = ImageIndex([photos])
    ds = StreamDataset(index, list(range(len(index))), 128, seed=0, augment=False, memory_mb=0)
    held = HeldOut(ds, 8, torch.device("cpu"))
    first = [x.clone() for x in held]
    second = list(held)
    assert [len(x) for x in first] == [8, 8, 1] and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].dtype == torch.float32 and float(first[0].min()) >= -1.0 and len(held.skipped) == 1
    assert len(pickle.dumps(ds)) < 4000
