"""What a distillation run learns from: the teacher (checked against its ``.tflite``) and the photos.

Split out of :mod:`blazeport.distill.trainer` (which runs the epochs) so that each stays readable:
:class:`Teacher` loads and checks the converted original, :class:`Data` opens the photos (folders or
WebDataset shards), their split, and the hand-drawn boxes of ``--boxes`` where a user has them
(:mod:`blazeport.distill.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import blazeport
from blazeport.distill.config import TrainConfig
from blazeport.distill.dataset import AugmentConfig
from blazeport.distill.labels import Labels, labels_for, read_labels
from blazeport.distill.shards import ShardIndex, ShardTrain, is_shard_spec
from blazeport.distill.spool import Spool
from blazeport.distill.stream import FolderTrain, HeldOut, ImageIndex, StreamDataset
from blazeport.distill.validation import check_teacher
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized
from blazeport.specs import ModelSpec

__all__ = ["VAL_BATCH", "Data", "Teacher"]

VAL_BATCH = 64  # held-out images per validation batch


@dataclass
class Teacher:
    """The converted original, checked against its ``.tflite``, frozen on the run's device."""

    spec: ModelSpec
    module: nn.Module
    check: dict[str, Any]  # check_teacher's report
    anchors: np.ndarray

    @classmethod
    def load(cls, name: str, device: torch.device) -> Teacher:
        detector = blazeport.load(name, backend="torch")
        spec, module = detector.spec, detector.backend.module
        check = check_teacher(spec, module)
        # channels-last: oneDNN's NHWC depthwise kernels make the teacher ~3x faster on CPU
        module = module.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        return cls(spec, module, check, anchors_for(spec))


@dataclass
class Data:
    """The photos, streamed (:mod:`blazeport.distill.stream` for folders, :mod:`blazeport.distill.shards`
    for WebDataset tars), split by ``cfg.split_rule`` (:mod:`blazeport.distill.split`: a hash of each
    photo's bytes for new runs); held-out batches are decoded each time they are validated, so memory
    does not grow with the number of photos."""

    train_set: FolderTrain | ShardTrain  # augmented, seeded per (seed, epoch, sample)
    val_batches: HeldOut
    test_batches: HeldOut  # never chooses anything; measured once, on the chosen student

    @classmethod
    def load(cls, cfg: TrainConfig, size: int, device: torch.device, rank: int = 0) -> Data:
        aug = AugmentConfig.parse(cfg.augment, cfg.zoom)
        if is_shard_spec(cfg.images):
            index = ShardIndex(cfg.images, cfg.val_fraction, cfg.test_fraction, cfg.split_rule, cfg.cache_dir)
            train_set = ShardTrain(index, size, cfg.seed, aug, cfg.workers)
            # only rank 0 validates: the others need no held-out copy
            held = [Spool(index, which, size, cfg.cache_dir) if rank == 0 else [] for which in ("val", "test")]
            return cls(train_set, HeldOut(held[0], VAL_BATCH, device), HeldOut(held[1], VAL_BATCH, device))
        index = ImageIndex(cfg.images, cfg.limit)
        index.check_readable(range(len(index)))  # stops at the first readable photo
        train_idx, val_idx, test_idx = index.split(cfg.val_fraction, cfg.test_fraction, cfg.split_rule, cfg.cache_dir)
        n = len(index)

        def part(indices: list[int], augment: bool) -> StreamDataset:  # the memory cache, shared out by split size
            labels = photo_labels(cfg.boxes, index, indices) if augment and cfg.boxes else None
            return StreamDataset(index, indices, size, cfg.seed, augment, aug if augment else None, cfg.cache_dir,
                                 cfg.memory_cache_mb * len(indices) / n, labels)

        return cls(FolderTrain(part(train_idx, True), cfg.workers),
                   HeldOut(part(val_idx, False), VAL_BATCH, device, cfg.workers),
                   HeldOut(part(test_idx, False), VAL_BATCH, device, cfg.workers))

    def skipped(self) -> set[str]:
        return self.val_batches.skipped | self.test_batches.skipped


def photo_labels(path: str, index: ImageIndex, indices: list[int]) -> dict[int, Labels]:
    """``--boxes``' faces of the training photos that have an entry (matched by file name, as ``blazeport eval
    --boxes`` matches), by photo index. A photo whose entry gives no size is read once for its own; a box
    outside its image is one error naming the entry."""
    table = read_labels(path)
    out: dict[int, Labels] = {}
    for i in indices:
        photo = index.paths[i]
        entry = table.get(Path(photo).name)
        if entry is None:
            continue
        width, height = entry.get("width"), entry.get("height")
        if not (width and height):
            try:
                width, height = read_image_sized(photo)[1]
            except ImageReadError:
                continue  # unreadable: skipped and counted where the sample is made
        out[i] = labels_for(entry, int(width), int(height), f"--boxes {path}: entry {Path(photo).name!r}")
    return out
