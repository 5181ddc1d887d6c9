"""WebDataset tar shards as distillation input: ``--images 'shards/{000..099}.tar'``.

Large unlabeled pools are stored and streamed as tar shards (WebDataset's format: the members of
one sample share a ``__key__``, the path without its extensions; the image is its ``jpg``,
``jpeg``, ``png``, ``webp`` or ``bmp`` member). The ``webdataset`` package expands the braces and
reads the tars as streams (:func:`webdataset.tariterators.tarfile_samples`); this module decides
who reads what, so that a run stays reproducible:

- **Split**: by a sha1 of each sample's image bytes (:mod:`blazeport.distill.split`, as a folder run
  hashes each photo's bytes), so a sample is in the same split on every rank, every epoch,
  whichever shard holds it, and a copy of it under another ``__key__`` or in another shard lands
  beside it. Hashing reads every shard once before training (``--cache-dir`` keeps the hashes per
  shard, keyed by path, mtime and size, so a resume or a second run reads no shard to split); a
  run recorded before this rule keeps its ``__key__`` hash when resumed (tar headers only).
- **Epochs**: each epoch shuffles the shard order with (seed, epoch); rank r of W reads shards
  ``r::W`` of that order (each DDP rank its own shards: webdataset's ``split_by_node``), and
  DataLoader worker w of K reads ``w::K`` of those (``split_by_worker``). Within a worker a
  buffer of ``SHUFFLE_BUFFER`` encoded samples is shuffled with (seed, epoch, rank, worker).
  Augmentation is seeded per (seed, epoch, hash of the key), as a folder run seeds per index.
- **Steps**: every rank must take the same number of steps (DDP's all-reduce would wait forever
  for a rank that ran dry), so before training every rank indexes all shards (the same pass that
  hashes them) and counts each shard's training samples. Every epoch gives each rank at least
  ``shards // world`` shards, so an epoch has (the training samples of the ``shards // world``
  smallest shards) // batch steps, and a rank stops there: with shards of equal size and as many
  shards as processes times a whole number, that is every sample; otherwise the rest of a larger
  share waits for another epoch's shard order.
- **Resume**: at an epoch boundary, or inside an epoch (``--checkpoint-every`` /
  ``--checkpoint-minutes``). An epoch's stream is a pure function of (seed, epoch, world size,
  ``--workers``), so a run resumed with the same world size and workers continues exactly: inside an
  epoch each worker re-reads its part of the stream before the checkpointed step, decoding it (an
  unreadable sample's stand-in is the previous readable photo, so the photos must be decoded to
  know which one that is) but not augmenting it, and yields from there. Which worker's sample comes
  n-th is fixed here, not left to the DataLoader (:func:`~blazeport.distill.midepoch.round_robin_order`,
  :func:`~blazeport.distill.midepoch.in_order`), so the resumed stream goes on in the uninterrupted one's order.
- **Held-out samples**: rank 0 copies the validation and test samples' encoded bytes once, at
  start, into a temporary spool file (a few percent of the pool on disk, never in memory) and
  decodes them from there each epoch.
- **Unreadable samples** are counted and replaced by the worker's previous readable photo
  (augmented with the unreadable sample's own seed), so the count of samples, and of steps, holds.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from blazeport.distill.dataset import AugmentConfig, downscale, make_input_uint8, name_hash, sample_rng
from blazeport.distill.midepoch import in_order, loader_generator, round_robin_order
from blazeport.distill.split import CONTENT_RULE, HashCache, hex_place, split_places
from blazeport.distill.stream import Sample, _init_worker, collate, to_batch
from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import _REDUCED_FLAGS, ImageReadError, _check_pixels, _header_size, _reduction
from blazeport.pipeline.preprocess import MAX_PIXELS as _MAX_PIXELS

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
SHUFFLE_BUFFER = 256  # encoded samples (about 60 KB each) shuffled within a worker


def is_shard_spec(images: Sequence[str]) -> bool:
    """True when ``--images`` names tar shards (``x.tar``, ``shards/{000..099}.tar``) rather than folders."""
    return any(str(s).endswith(".tar") for s in images)


def expand(images: Sequence[str]) -> list[str]:
    """Brace-expanded shard paths (``{000..099}``), every one an existing ``.tar`` file, or one error."""
    from webdataset.shardlists import expand_urls  # imported only for a shard run

    urls = [u for spec in images for u in expand_urls(str(spec))]
    bad = [u for u in urls if not u.endswith(".tar")]
    if bad:
        raise BlazeportError(f"--images mixes tar shards and other paths ({bad[0]}); give either folders of photos or "
                             "WebDataset .tar shards")
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise BlazeportError(f"--images: shard {missing[0]} does not exist ({len(missing)} of {len(urls)} missing); check "
                             "the brace pattern, e.g. 'shards/{000..099}.tar' in quotes")
    return urls


def key_and_ext(name: str) -> tuple[str | None, str | None]:
    """WebDataset's split of a member name into ``__key__`` and extension (``a/b.c.jpg`` -> ``a/b``, ``c.jpg``)."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def image_member(ext: str | None) -> bool:
    return ext is not None and ext.lower() in IMAGE_KEYS


def decode(data: bytes, name: str, size: int) -> np.ndarray:
    """Encoded image bytes -> downscaled RGB uint8 (as :func:`~blazeport.pipeline.preprocess.read_image`, EXIF
    rotation and the pixel limit included). Raises ImageReadError."""
    header = _header_size(io.BytesIO(data))
    flags = cv2.IMREAD_COLOR
    if header is not None:
        _check_pixels(Path(name), header, _MAX_PIXELS)
        if data[:3] == b"\xff\xd8\xff":  # a JPEG decoded reduced, as load_photo does for files
            flags = _REDUCED_FLAGS.get(_reduction(*header, 2 * size), cv2.IMREAD_COLOR)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    except cv2.error:
        img = None
    if img is None:
        raise ImageReadError(f"{name}: not an image OpenCV can decode (empty, truncated or another format).")
    return downscale(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


class ShardIndex:
    """Every shard's training-sample count and the split, from one pass over the shards: image data read
    and hashed under the ``content-sha1`` rule (kept in ``cache_dir`` for the next run), tar headers
    only under the old ``file-name`` rule."""

    def __init__(self, images: Sequence[str], val_fraction: float, test_fraction: float, rule: str = CONTENT_RULE,
                 cache_dir: str | Path | None = None):
        self.urls = expand(images)
        self.val_fraction, self.test_fraction, self.rule = val_fraction, test_fraction, rule
        self.train_counts = np.zeros(len(self.urls), dtype=np.int64)
        held: list[tuple[int, str, float]] = []  # (shard, key, place) of held-out samples: a few percent of the pool
        held_keys: list[frozenset[str]] = []  # per shard: what the training stream leaves out
        places: list[float] = []
        cache = HashCache(cache_dir if rule == CONTENT_RULE else None)
        for s, url in enumerate(self.urls):
            mine = set()
            for key, place in self._image_places(url, rule, cache):
                places.append(place)
                if place < val_fraction + test_fraction:
                    held.append((s, key, place))
                    mine.add(key)
                else:
                    self.train_counts[s] += 1
            held_keys.append(frozenset(mine))
        cache.save()
        if not places:
            raise BlazeportError(f"no images found in the {len(self.urls)} shard(s) {self.urls[0]}...: a WebDataset sample's "
                                 f"image is its {', '.join(IMAGE_KEYS)} member")
        self.total = len(places)
        by = "sample's image bytes" if rule == CONTENT_RULE else "sample's __key__"
        split_places(places, val_fraction, test_fraction, what="samples", by=by)  # its two refusals
        self.held, self.held_keys = held, held_keys

    def is_train(self, shard: int, name: str) -> bool:
        """Whether tar member ``name`` of ``shard`` is a training image (what the training stream reads)."""
        key, ext = key_and_ext(name)
        return image_member(ext) and key not in self.held_keys[shard]

    @staticmethod
    def _image_places(url: str, rule: str, cache: HashCache) -> list[tuple[str, float]]:
        """``(__key__, place)`` of each image member of one shard, in tar order."""
        file_key = HashCache.key(url)
        cached = cache.get(file_key)
        if rule == CONTENT_RULE and isinstance(cached, list):
            return [(key, hex_place(digest)) for key, digest in cached]
        found: list[tuple[str, str | None]] = []
        try:
            with tarfile.open(url, "r:") as tar:  # seekable: under the name rule, headers only
                for m in tar:
                    key, ext = key_and_ext(m.name)
                    if m.isreg() and image_member(ext):
                        data = tar.extractfile(m).read() if rule == CONTENT_RULE else None
                        found.append((key, hashlib.sha1(data).hexdigest() if data is not None else None))
        except (OSError, tarfile.TarError) as exc:
            raise BlazeportError(f"{url}: not a readable tar shard ({exc}); check the file or leave it out") from None
        if rule != CONTENT_RULE:
            return [(key, name_hash(key)) for key, _ in found]
        cache.put(file_key, [list(f) for f in found])
        return [(key, hex_place(digest)) for key, digest in found]

    def shards_of(self, epoch: int, seed: int, rank: int, world: int) -> list[int]:
        order = np.random.default_rng([seed, epoch, 104729]).permutation(len(self.urls))
        return order[rank::world].tolist()

    def steps(self, world: int, batch: int) -> int:
        """Steps per epoch, the same on every rank and every epoch: any epoch gives each rank at least
        ``len(shards) // world`` shards, so the smallest that many shards hold is a share every rank has."""
        if world > len(self.urls):
            raise BlazeportError(f"{len(self.urls)} shard(s) for {world} processes: each DDP rank reads its own shards, so "
                                 "give at least as many shards as processes")
        least = int(np.sort(self.train_counts)[: len(self.urls) // world].sum())
        return max(1, least // batch)


def quotas(count: int, available: list[int]) -> list[int]:
    """How many of a rank's ``count`` samples each worker yields: as even as the workers' shards allow
    (a worker whose shards hold fewer gives what it has, the others the rest). The loader reads workers
    round-robin, skipping one that has finished, so the order is fixed and the total is ``count``."""
    quota, left = [0] * len(available), count
    while left > 0:
        room = [w for w, a in enumerate(available) if quota[w] < a]
        if not room:
            break
        share = max(1, left // len(room))
        for w in room:
            take = min(share, available[w] - quota[w], left)
            quota[w] += take
            left -= take
    return quota


class ShardStream(IterableDataset):
    """One rank's training samples for one epoch: ``(uint8 sample, skipped)``, exactly ``count`` of them."""

    def __init__(self, index: ShardIndex, size: int, seed: int, aug: AugmentConfig | None = None):
        self.index, self.size, self.seed, self.aug = index, size, seed, aug or AugmentConfig()
        self.epoch, self.rank, self.world, self.count = 0, 0, 1, 0
        self.skips: list[int] | None = None  # per worker: samples before a mid-epoch resume's step, read but not yielded

    def configure(self, epoch: int, rank: int, world: int, count: int, skips: list[int] | None = None) -> None:
        self.epoch, self.rank, self.world, self.count, self.skips = epoch, rank, world, count, skips

    def worker_quotas(self, workers: int) -> list[int]:
        """How many samples each of ``workers`` loader processes yields this epoch (see :func:`quotas`)."""
        mine, k = self.index.shards_of(self.epoch, self.seed, self.rank, self.world), max(1, workers)
        return quotas(self.count, [int(self.index.train_counts[mine[w::k]].sum()) for w in range(k)])

    def _encoded(self, shards: list[int]) -> Iterator[tuple[str, str, bytes]]:
        from webdataset.tariterators import tarfile_samples

        for s in shards:  # one shard at a time: which members are training ones depends on the shard
            select = functools.partial(self.index.is_train, s)
            for sample in tarfile_samples([{"url": self.index.urls[s]}], select_files=select):
                ext = next((k for k in IMAGE_KEYS if k in sample), None)
                if ext is not None:
                    yield sample["__key__"], sample["__url__"], sample[ext]

    def __iter__(self) -> Iterator[tuple[Sample, int]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.index.shards_of(self.epoch, self.seed, self.rank, self.world)
        shards = mine[worker::workers]
        quota = self.worker_quotas(workers)[worker]
        skip = self.skips[worker] if self.skips else 0
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 15485863])
        buffer: list[tuple[str, str, bytes]] = []
        last: np.ndarray | None = None
        pending: list[tuple[str, tuple[str, ...]]] = []  # unreadable before any readable photo: (key, skipped)
        made = 0

        def emit(key: str, img: np.ndarray, skipped: tuple[str, ...]) -> Sample | None:
            if made <= skip:  # before a mid-epoch resume's step: counted, not augmented, not yielded
                return None
            r = sample_rng(self.seed, self.epoch, int(name_hash(key) * 0xFFFFFFFF))
            return make_input_uint8(img, self.size, r, self.aug), skipped

        def drain(final: bool) -> Iterator[tuple[Sample, int]]:
            nonlocal last, made
            while buffer and (final or len(buffer) >= SHUFFLE_BUFFER) and made < quota:
                key, url, data = buffer.pop(int(rng.integers(len(buffer))))
                try:
                    img = decode(data, f"{key} in {url}", self.size)
                except ImageReadError as exc:
                    if last is None:
                        pending.append((key, (str(exc),)))
                        continue
                    made += 1
                    yield from _some(emit(key, last, (str(exc),)), worker)
                    continue
                last = img
                for k, sk in pending:
                    if made < quota:
                        made += 1
                        yield from _some(emit(k, img, sk), worker)
                pending.clear()
                if made < quota:
                    made += 1
                    yield from _some(emit(key, img, ()), worker)

        for item in self._encoded(shards):
            buffer.append(item)
            yield from drain(False)
            if made >= quota:
                return
        yield from drain(True)


def _one(sample: tuple[Sample, int]) -> tuple[Sample, int]:
    return sample


def _some(sample: Sample | None, worker: int) -> Iterator[tuple[Sample, int]]:
    """A sample with the worker that made it (``ShardTrain`` puts the workers' samples in a fixed order)."""
    if sample is not None:
        yield sample, worker


def shard_loader(stream: ShardStream, workers: int) -> DataLoader:
    """Samples (not batches) from ``workers`` processes, read round-robin in worker order; the trainer
    groups them into batches, so the number of samples, and of steps, does not depend on ``workers``."""
    return DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_one,
                      prefetch_factor=16 if workers > 0 else None,
                      worker_init_fn=functools.partial(_init_worker, None) if workers > 0 else None,
                      generator=loader_generator(0))  # draws nothing from torch's global RNG (midepoch)


class ShardTrain:
    """The training side of a shard run, with the same interface as :class:`~blazeport.distill.stream.FolderTrain`."""

    def __init__(self, index: ShardIndex, size: int, seed: int, aug: AugmentConfig, workers: int):
        self.index, self.workers = index, workers
        self.stream = ShardStream(index, size, seed, aug)
        self.seed = seed

    def __len__(self) -> int:
        return int(self.index.train_counts.sum())

    def steps(self, rank: int, world: int, batch: int) -> int:
        return self.index.steps(world, batch)

    def epoch(self, epoch: int, rank: int, world: int, batch: int,
              start: int = 0) -> Iterator[tuple[torch.Tensor, tuple[str, ...]]]:
        """This epoch's batches from step ``start`` on (a mid-epoch resume; see the module docstring)."""
        steps = self.steps(rank, world, batch)
        # no more workers than this rank's fewest shards: a worker without a shard could not fill its quota
        workers = min(self.workers, len(self.index.urls) // world)
        self.stream.configure(epoch, rank, world, steps * batch)
        order = round_robin_order(self.stream.worker_quotas(workers))
        if start:  # each worker reads, but does not yield, its samples before the step
            self.stream.configure(epoch, rank, world, steps * batch,
                                  [order[: start * batch].count(w) for w in range(max(1, workers))])
        # a fresh loader per epoch: its workers fork with this epoch's configuration
        group: list[Sample] = []
        for s in in_order(shard_loader(self.stream, workers), order[start * batch:], max(1, workers)):
            group.append(s)
            if len(group) == batch:
                yield collate(group)
                group = []
        if group:  # only when the workers ran dry (no readable photo at all on a shard set)
            yield collate(group)

    def shard_names(self, epoch: int, rank: int, world: int) -> list[str]:
        return [self.index.urls[s] for s in self.index.shards_of(epoch, self.seed, rank, world)]

    def first(self, n: int, device: torch.device) -> torch.Tensor:
        self.stream.configure(0, 0, 1, n)  # no skips
        return to_batch(collate([s for s, _ in self.stream])[0], device)
