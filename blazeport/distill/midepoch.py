"""Checkpoints inside an epoch: when to write one, what it records, and how a resumed run finds its place.

Why: an epoch of 50,000 photos lasts about a quarter of an hour on a CPU, and a run that is killed
(a laptop lid, a pre-empted cloud machine) used to lose everything since the last epoch's end.
``blazeport distill --checkpoint-every N`` writes ``last.pt`` after every N-th optimizer step and
``--checkpoint-minutes M`` after the first step that ends M minutes or more after the previous
checkpoint (both may be given; either triggers). The epoch-end checkpoint is written as before.

What makes a mid-epoch ``last.pt`` resume EXACTLY (the resumed run ends with the uninterrupted
run's metrics, bit for bit on CPU; ``tests/test_distill.py`` kills a run with SIGKILL right after one):

- the weights, optimizer, scheduler, AMP scaler and the global RNG states, as at an epoch's end
  (:mod:`blazeport.distill.checkpoint`), taken after the step;
- a :class:`Position`: the epoch in progress, the steps of it already taken, the running sums of each
  loss term (the epoch's ``train_*`` means in ``metrics.json`` average every step of the epoch, those
  before the kill included) and the seconds spent;
- the sampler position needs no state of its own: an epoch's batches are a pure function of
  (seed, epoch) for a folder, and of (seed, epoch, world size, ``--workers``) for WebDataset shards,
  so the resumed run recomputes the epoch's order and starts at the recorded step (a folder skips
  the first batches of the order without reading them; shards re-read the part of the stream before
  the step, decoding but not augmenting it, in the order :func:`round_robin_order` fixes). The ``mosaic`` and Noisy
  Student generators are seeded by the global step (:mod:`blazeport.distill.mosaic`,
  :mod:`blazeport.distill.noisy`), and the DataLoaders draw their worker seeds from a generator of
  their own (:func:`loader_generator`), not from torch's global one, so creating the epoch's loader
  at the resumed step consumes nothing the uninterrupted run did not.

A mid-epoch checkpoint records the world size, the per-process batch and the steps an epoch has
(and ``--workers`` for shards); a resume that changes one of them could not repeat the epoch's
order, and is refused in one message.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from blazeport.errors import BlazeportError

__all__ = ["CheckpointCadence", "Position", "in_order", "loader_generator", "round_robin_order"]


@dataclass
class Position:
    """Where in an epoch a mid-epoch checkpoint was taken (plain values: it loads with ``weights_only``)."""

    epoch: int  # 0-based, the epoch in progress
    step: int  # optimizer steps of that epoch already taken (0 < step < steps_per_epoch)
    sums: dict[str, float] = field(default_factory=dict)  # each loss term summed over those steps
    seconds: float = 0.0  # time spent in the epoch so far (for images/s)
    steps_per_epoch: int = 0
    world: int = 1
    batch: int = 0  # this process's share of a batch
    workers: int | None = None  # shards only: their stream depends on --workers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Position | None:
        """A checkpoint's ``position``, or None for an epoch-end checkpoint (or a damaged entry: see :meth:`problem`)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**data)
        except TypeError:
            return None

    @staticmethod
    def problem(data: Any) -> str | None:
        """What is wrong with a checkpoint's ``position`` entry, or None (None itself is fine: an epoch end)."""
        if data is None:
            return None
        pos = Position.from_dict(data)
        if pos is None:
            return "position malformed"
        whole = (pos.epoch, pos.step, pos.steps_per_epoch, pos.world, pos.batch)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in whole) or not 0 < pos.step < pos.steps_per_epoch \
                or pos.epoch < 0 or not isinstance(pos.sums, dict) \
                or not all(isinstance(v, float) and math.isfinite(v) for v in pos.sums.values()):
            return "position malformed"
        return None

    def check_fits(self, path: Any, steps_per_epoch: int, world: int, batch: int, workers: int | None) -> None:
        """Refuse (one message, the file kept) a resume whose epoch would not repeat the recorded one."""
        saved = (self.steps_per_epoch, self.world, self.batch, self.workers)
        now = (steps_per_epoch, world, batch, workers)
        if saved != now:
            names = ("steps per epoch", "processes", "batch per process", "--workers")
            diff = ", ".join(f"{n} {a} then, {b} now" for n, a, b in zip(names, saved, now, strict=True) if a != b)
            raise BlazeportError(
                f"{path} was written in the middle of epoch {self.epoch + 1} (step {self.step} of {self.steps_per_epoch}); "
                f"this run would cut that epoch into other batches ({diff}), so it cannot continue it exactly: resume "
                "with the same --images, --batch-size, number of processes and (for shards) --workers; it was left as it is")


class CheckpointCadence:
    """Whether a mid-epoch checkpoint is due after a step: every ``every`` global steps, and/or once
    ``minutes`` have passed since the last checkpoint (``clock``: seconds, monotonic; tests pass their own)."""

    def __init__(self, every: int | None, minutes: float | None, clock: Callable[[], float] = time.monotonic):
        self.every, self.minutes, self.clock = every, minutes, clock
        self.last = clock()

    @property
    def active(self) -> bool:
        return bool(self.every) or bool(self.minutes)

    def due(self, global_step: int, step_in_epoch: int, steps_per_epoch: int) -> bool:
        """After the step that made ``global_step`` (and ``step_in_epoch`` of the epoch): write one now?
        Never after an epoch's last step: the epoch-end checkpoint follows it."""
        if step_in_epoch >= steps_per_epoch:
            return False
        if self.every and global_step % self.every == 0:
            return True
        return bool(self.minutes) and self.clock() - self.last >= 60.0 * self.minutes

    def written(self) -> None:
        """A checkpoint was written (mid-epoch or at an epoch's end): the minutes count from now."""
        self.last = self.clock()


def loader_generator(seed: int) -> torch.Generator:
    """The generator a DataLoader draws its worker base seed from. Without one, creating a loader's
    iterator draws from torch's global RNG, and a run resumed mid-epoch (which creates the epoch's
    iterator at the resumed step, not at the epoch's start) would draw at another moment than the
    uninterrupted run. Samples never depend on it: they are seeded per (seed, epoch, sample)."""
    return torch.Generator().manual_seed(seed * 7_919 + 17)


def round_robin_order(quota: list[int]) -> list[int]:
    """The worker that yields each sample of an epoch whose worker w yields ``quota[w]`` samples: 0, 1, ...,
    K-1, 0, 1, ... over the workers that still have samples.

    That is the order PyTorch's ``_MultiProcessingDataLoaderIter`` gives an IterableDataset (tasks go to
    the active workers in turn, results come back in task order, a worker that ran dry is skipped), and
    :class:`~blazeport.distill.shards.ShardTrain` enforces it whatever the loader does, because a loader
    created at a resumed step starts its turn at worker 0 again. A shard run resumed at step s has each
    worker skip its count among the first ``s * batch`` entries."""
    order: list[int] = []
    left = list(quota)
    while any(left):
        for w in range(len(left)):
            if left[w]:
                order.append(w)
                left[w] -= 1
    return order


def in_order(loader: Iterable[tuple[Any, int]], order: list[int], workers: int) -> Iterator[Any]:
    """The workers' samples in ``order`` (worker ids, :func:`~blazeport.distill.midepoch.round_robin_order`).

    The loader's own order is that round robin too, but it starts at worker 0 whenever it is created: after
    a mid-epoch resume the stream must go on where the uninterrupted one was (worker 2, say), so each
    worker's samples wait here (at most one round) until their turn. A worker that ends early (no readable
    photo in its shards) ends the epoch where its turn comes."""
    queues: list[deque[Any]] = [deque() for _ in range(workers)]
    it = iter(loader)
    for w in order:
        while not queues[w]:
            try:
                sample, made_by = next(it)
            except StopIteration:
                return
            queues[made_by].append(sample)
        yield queues[w].popleft()
