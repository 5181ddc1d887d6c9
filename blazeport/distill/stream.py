"""Streaming photos for distillation: an index of paths, decoded in DataLoader workers.

The trainer used to decode every photo into a list before the first step, so its memory grew with
the folder (about 200 KB per photo at twice a 128 px input; 100,000 photos would need ~20 GB).
Here only the paths are held, packed in two numpy arrays (:class:`PathTable`: ~60 bytes a photo,
no Python objects, so forked workers do not copy-on-touch them), and :class:`StreamDataset`
decodes a photo when a sample of it is asked for, in ``--workers`` DataLoader processes. Two
optional caches keep small folders as fast as before without making memory grow with large ones:

- a memory cache (``--memory-cache-mb``, default 1024, split between the workers): downscaled
  photos kept per process until the budget is spent, then decoded again each time;
- a disk cache (``--cache-dir DIR``): each downscaled photo as a ``.npy`` file named by a hash of
  its resolved path, mtime, size and the input size (a changed photo is a new entry), written
  atomically, never beside the user's photos.

What stays as it was: samples that are a pure function of (seed, epoch, index), so resume, DDP
ranks and any number of workers see the same samples. The split is
:func:`~blazeport.distill.dataset.split_paths`: by a hash of each photo's bytes for new runs (a
renamed copy lands beside its original), by file name for runs recorded before that rule.
Workers return uint8 samples; the one conversion to [-1, 1] (:func:`~blazeport.distill.dataset.to_unit`)
runs in the training process. A file that cannot be read is skipped and counted: its sample is cut
from the next readable photo of the same split (a deterministic stand-in), so a batch keeps its
size and DDP ranks keep the same number of steps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from blazeport import files
from blazeport.distill.dataset import (
    AugmentConfig,
    load_photo,
    make_input_matrix,
    make_input_uint8,
    sample_rng,
    split_paths,
    to_unit,
)
from blazeport.distill.labels import Labels, transport
from blazeport.distill.midepoch import loader_generator
from blazeport.distill.split import CONTENT_RULE
from blazeport.errors import BlazeportError
from blazeport.pipeline.photos import list_images
from blazeport.pipeline.preprocess import ImageReadError

# A sample as a loader returns it: uint8 (S, S, 3) and the files that could not be read for it; with --boxes a
# third item, the photo's hand-drawn faces in the sample's pixels ((M, 16), blazeport.distill.labels) or None
Sample = tuple[np.ndarray, tuple[str, ...]] | tuple[np.ndarray, tuple[str, ...], np.ndarray | None]


class PathTable:
    """Many paths in two numpy arrays (UTF-8 bytes and offsets): small, picklable, no per-path objects."""

    def __init__(self, paths: Sequence[str | Path]):
        encoded = [os.fsencode(str(p)) for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes())


class ImageIndex:
    """The photos of ``--images`` as paths only (listing 100,000 files takes about a second)."""

    def __init__(self, sources: Sequence[str | Path], limit: int | None = None):
        paths = list_images(list(sources))
        if not paths:
            raise BlazeportError(f"no images found in {', '.join(map(str, sources))}: give folders of .jpg/.png photos")
        self.sources = [str(s) for s in sources]
        self.paths = PathTable(paths[:limit] if limit is not None else paths)

    def __len__(self) -> int:
        return len(self.paths)

    def split(self, val_fraction: float, test_fraction: float = 0.0, rule: str = CONTENT_RULE,
              cache_dir: str | Path | None = None) -> tuple[list[int], list[int], list[int]]:
        """Train / validation / test indices by ``rule`` (:func:`~blazeport.distill.dataset.split_paths`:
        ``content-sha1``, each photo's bytes, for new runs); ``cache_dir`` keeps the hashes for the next run."""
        return split_paths([self.paths[i] for i in range(len(self))], val_fraction, test_fraction, rule, cache_dir)

    def check_readable(self, indices: Sequence[int]) -> None:
        """Raise unless one of ``indices`` decodes (tries them in order; stops at the first that does)."""
        first = None
        for i in indices:
            try:
                load_photo(self.paths[i], 64)
                return
            except ImageReadError as exc:
                first = first or str(exc)
        raise BlazeportError(f"none of the {len(self)} files in {', '.join(self.sources)} is a readable image "
                             f"(first: {first})")


class DiskCache:
    """Downscaled photos as ``.npy`` files under one folder, keyed by path, mtime, size and input size."""

    def __init__(self, folder: str | Path, input_size: int):
        self.folder, self.input_size = Path(folder), input_size

    def _file(self, path: str) -> Path:
        st = os.stat(path)
        key = f"{os.path.realpath(path)}\0{st.st_mtime_ns}\0{st.st_size}\0{self.input_size}"
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, path: str) -> np.ndarray:
        """The downscaled photo, from the cache or decoded (and then cached). Raises ImageReadError."""
        try:
            file = self._file(path)
        except OSError as exc:
            raise ImageReadError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            pass  # not cached yet (or a damaged entry: rewritten below)
        img = load_photo(path, self.input_size)
        buf = io.BytesIO()
        np.save(buf, img, allow_pickle=False)
        # the one atomic writer (a temp file per process, renamed): a killed worker leaves no half entry, and a
        # full disk costs speed, not the run
        with contextlib.suppress(BlazeportError):
            files.write_atomic(file, buf.getvalue())
        return img


class StreamDataset(Dataset):
    """Map-style: ``(epoch, i)`` -> (uint8 sample, unreadable files). Holds paths, never decoded photos
    beyond the bounded memory cache.

    The epoch travels with the index (see :class:`EpochBatches`), so persistent workers, which hold
    their own copy of this object, need no message when an epoch starts.
    """

    def __init__(self, index: ImageIndex, indices: Sequence[int], size: int, seed: int, augment: bool,
                 aug: AugmentConfig | None = None, cache_dir: str | Path | None = None, memory_mb: float = 0.0,
                 labels: dict[int, Labels] | None = None):
        self.paths, self.size, self.seed, self.augment = index.paths, size, seed, augment
        self.labels = labels  # --boxes: photo index -> its hand-drawn faces (None: no --boxes)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.aug = aug or AugmentConfig()
        self.input_size = size
        self.disk = DiskCache(cache_dir, size) if cache_dir else None
        self.memory_budget = int(memory_mb * 2**20)  # per process; the loader divides it between workers
        self._memory: dict[int, np.ndarray] = {}
        self._memory_used = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_memory"], state["_memory_used"] = {}, 0  # a copy (a worker, a pickle) starts with an empty cache
        return state

    def photo(self, idx: int) -> np.ndarray:
        """Photo ``idx`` of the index, downscaled. Raises ImageReadError."""
        img = self._memory.get(idx)
        if img is not None:
            return img
        path = self.paths[idx]
        img = self.disk.load(path) if self.disk else load_photo(path, self.size)
        if self._memory_used + img.nbytes <= self.memory_budget:
            self._memory[idx] = img
            self._memory_used += img.nbytes
        return img

    def sample(self, i: int, epoch: int | None = None) -> Sample:
        """Sample ``i`` of this split at ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        idx = int(self.indices[i])
        rng = sample_rng(self.seed, epoch, idx) if self.augment else None
        skipped: list[str] = []
        for k in range(len(self.indices)):  # an unreadable photo: the next readable one of the split stands in
            used = int(self.indices[(i + k) % len(self.indices)])
            try:
                img = self.photo(used)
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            if self.labels is None:
                return make_input_uint8(img, self.size, rng, self.aug), tuple(skipped)
            out, matrix = make_input_matrix(img, self.size, rng, self.aug)
            faces = self.labels.get(used)  # the boxes of the photo actually used (a stand-in's own)
            return out, tuple(skipped), (transport(faces, img.shape[1], img.shape[0], matrix) if faces is not None else None)
        raise BlazeportError(f"none of the {len(self.indices)} photos of this split is readable (first: {skipped[0]})")

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        return self.sample(i, epoch)

    def order(self, rank: int = 0, world: int = 1) -> list[int]:
        """This epoch's shuffled sample order, this rank's share (same on every rank)."""
        perm = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(len(self))
        if self.augment:
            return perm[rank::world].tolist()
        return list(range(len(self)))[rank::world]

    def batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """Samples ``indices`` (decoded here, in this process) as a ``(B, 3, S, S)`` float tensor."""
        return to_batch(collate([self.sample(i) for i in indices])[0], device)

    def skipped_files(self) -> list[str]:
        return []


def collate(samples: list[Sample]) -> tuple[Any, ...]:
    """uint8 samples -> one ``(B, S, S, 3)`` uint8 tensor (what crosses from a worker), and the skipped files;
    with ``--boxes`` also each sample's hand-drawn faces (a tuple of ``(M, 16)`` arrays or None)."""
    batch = torch.from_numpy(np.stack([s[0] for s in samples])), tuple(f for s in samples for f in s[1])
    if samples and len(samples[0]) > 2:
        return (*batch, tuple(s[2] for s in samples))  # type: ignore[misc]
    return batch


def to_batch(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A collated uint8 ``(B, S, S, 3)`` batch -> ``(B, 3, S, S)`` float32 in [-1, 1] on ``device``: the
    NHWC samples viewed as NCHW (channels-last memory, no copy before the move)."""
    return torch.from_numpy(to_unit(batch.numpy())).permute(0, 3, 1, 2).to(device)


class EpochBatches:
    """A batch sampler whose batches carry their epoch: ``[(epoch, i), ...]``."""

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def set(self, epoch: int, batches: list[list[int]]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return ([(self.epoch, i) for i in b] for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _init_worker(memory_share: int | None, _: int) -> None:
    """In a decoding process: its share of the memory cache, one torch thread (no intra-op threads
    competing with training). Module level, so it pickles where workers are spawned, not forked."""
    if memory_share is not None:
        torch.utils.data.get_worker_info().dataset.memory_budget = memory_share
    torch.set_num_threads(1)


def worker_loader(dataset: Dataset, batch_sampler: Any, workers: int, persistent: bool = True) -> DataLoader:
    """A DataLoader that decodes in ``workers`` processes (0: in this one), uint8 batches back.

    Each worker's copy of a :class:`StreamDataset` gets ``memory_budget / workers`` of memory cache.
    Worker seeds come from a generator of the loader's own (:func:`~blazeport.distill.midepoch.loader_generator`),
    so making a loader draws nothing from torch's global RNG (what a mid-epoch resume relies on)."""
    share = dataset.memory_budget // workers if workers > 0 and isinstance(dataset, StreamDataset) else None
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=functools.partial(_init_worker, share) if workers > 0 else None,
                      generator=loader_generator(0))


class FolderTrain:
    """The training side of a folder run: this epoch's batches of this rank's share, from the loader."""

    def __init__(self, dataset: StreamDataset, workers: int):
        self.dataset, self.sampler = dataset, EpochBatches()
        self.loader = worker_loader(dataset, self.sampler, workers)

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self, rank: int, world: int, batch: int) -> int:
        return max(1, len(self.dataset.order(rank, world)) // batch)

    def epoch(self, epoch: int, rank: int, world: int, batch: int,
              start: int = 0) -> Iterator[tuple[torch.Tensor, tuple[str, ...]]]:
        """This epoch's batches from step ``start`` on (a mid-epoch resume: the batches before it are never read)."""
        self.dataset.set_epoch(epoch)
        order = self.dataset.order(rank, world)
        self.sampler.set(epoch, [order[i : i + batch]
                                 for i in range(start * batch, self.steps(rank, world, batch) * batch, batch)])
        return iter(self.loader)

    def first(self, n: int, device: torch.device) -> torch.Tensor:
        return self.dataset.batch(range(min(n, len(self.dataset))), device)


class HeldOut:
    """Validation or test batches, decoded each time they are iterated (memory stays flat); a re-iterable
    of ``(B, 3, S, S)`` tensors, what :func:`~blazeport.distill.validation.validate` loops over."""

    def __init__(self, dataset: Any, batch: int, device: torch.device, workers: int = 0):
        self.dataset, self.batch, self.device, self.workers = dataset, batch, device, workers
        n = len(dataset)
        self.batches = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.batches)

    def __bool__(self) -> bool:
        return bool(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.workers == 0:
            for b in self.batches:
                x, skipped = collate([self.dataset.sample(i) for i in b])
                self.skipped.update(skipped)
                yield to_batch(x, self.device)
            return
        loader = worker_loader(self.dataset, self.batches, self.workers, persistent=False)
        for x, skipped in loader:
            self.skipped.update(skipped)
            yield to_batch(x, self.device)
