"""Unlabeled images for distillation: the split, the augmentation, and the in-memory photo set.

How photos become samples lives here; how they are fed at scale (an index of paths decoded in
loader workers, WebDataset shards) is :mod:`blazeport.distill.stream` and
:mod:`blazeport.distill.shards`, which the trainer uses. :class:`ImageSet` (every photo decoded
into a list) is the old in-memory path, kept for tools and as the streaming benchmark's baseline.

The split (:func:`split_paths`, rules in :mod:`blazeport.distill.split`): new runs place each photo
by a sha1 of its *bytes*, so a copy under another name can never sit in another split than its
original; a run that recorded no rule (started before) keeps the old file-name hash on resume.

The teacher labels each sample on the fly, on the very tensor the student sees, so every
augmentation keeps the pseudo-labels consistent by construction. The augmentations themselves are
:mod:`blazeport.distill.augment`. Geometry (zoom, shift, flip, close-ups) is folded into the
letterbox warp: one ``cv2.warpAffine`` from the (cached) photo to the model input, composed from
MediaPipe's letterbox transform and the random affine, so no resolution is lost to a second
resampling. Photometric changes and the failure modes (grey, low light, occlusion) follow on the
uint8 result.

Randomness is seeded per (seed, epoch, sample index), not drawn from a global stream: a run
resumed from a checkpoint, or split across DDP ranks or loader workers, sees exactly the same
samples as an uninterrupted single-process run.

(Not to be confused with :mod:`blazeport.pipeline.photos`, which lists image files and the bundled sample
photos; this module turns those photos into training samples.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from blazeport.distill.augment import AugmentConfig, photometric, random_affine
from blazeport.distill.split import CONTENT_RULE, file_places, split_places
from blazeport.distill.split import name_hash as name_hash  # re-exported: tools and tests import it from here
from blazeport.distill.split import split_by_hash as split_by_hash
from blazeport.errors import BlazeportError
from blazeport.pipeline.photos import list_images
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized, roi_transform


@dataclass
class ImageSet:
    """Photos decoded once and held in memory, downscaled to at most ``2 * input_size`` on the long side.

    The trainer streams instead (:mod:`blazeport.distill.stream`: memory does not grow with the
    number of photos); this is the in-memory path, kept for tools and as the baseline that
    ``tools/stream_bench.py`` measures against."""

    paths: list[Path]
    images: list[np.ndarray]
    skipped: list[str]

    @classmethod
    def load(cls, sources: list[str | Path], input_size: int, limit: int | None = None) -> ImageSet:
        paths = list_images(sources)
        if not paths:
            raise BlazeportError(f"no images found in {', '.join(map(str, sources))}: give folders of .jpg/.png photos")
        keep, images, skipped = [], [], []
        for p in paths:
            if limit is not None and len(images) >= limit:
                break
            try:
                img = load_photo(p, input_size)
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            keep.append(p)
            images.append(img)
        if not images:
            raise BlazeportError(f"none of the {len(paths)} files in {', '.join(map(str, sources))} is a readable image "
                                 f"(first: {skipped[0]})")
        return cls(keep, images, skipped)

    def split(self, val_fraction: float, test_fraction: float = 0.0,
              rule: str = CONTENT_RULE) -> tuple[list[int], list[int], list[int]]:
        """Train / validation / test indices, by ``rule`` (:mod:`blazeport.distill.split`: new runs hash
        each photo's bytes)."""
        return split_paths([str(p) for p in self.paths], val_fraction, test_fraction, rule)


def split_paths(paths: Sequence[str], val_fraction: float, test_fraction: float = 0.0, rule: str = CONTENT_RULE,
                cache_dir: str | Path | None = None) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test indices of photo files by ``rule``: ``content-sha1`` hashes each file's
    bytes (a copy under another name lands beside its original), ``file-name`` each file's name (the
    rule of runs that recorded none: :func:`~blazeport.distill.split.recorded_split_rule`)."""
    if rule == CONTENT_RULE:
        return split_places(file_places(paths, cache_dir), val_fraction, test_fraction)
    return split_by_hash([Path(p).name for p in paths], val_fraction, test_fraction)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def load_photo(path: str | Path, input_size: int) -> np.ndarray:
    """A photo as every sample is cut from it: RGB uint8, at most ``2 * input_size`` on the long side.

    A JPEG at least twice that size is decoded reduced by libjpeg (1/2, 1/4 or 1/8, its long side kept
    at ``2 * input_size`` or more: :func:`~blazeport.pipeline.preprocess.read_image_sized`'s ``reduce_to``), then
    shrunk with INTER_AREA; on ``../shared/data/unlabeled`` that decodes in 3.5 ms a photo instead of
    6.0 ms, which matters now that photos are decoded every epoch rather than once. Raises ImageReadError."""
    return downscale(read_image_sized(path, reduce_to=2 * input_size)[0], input_size)


def downscale(image: np.ndarray, input_size: int) -> np.ndarray:
    """At most ``2 * input_size`` on the long side (INTER_AREA): what every sample is cut from."""
    scale = 2 * input_size / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def make_input(image: np.ndarray, size: int, rng: np.random.Generator | None = None,
               aug: AugmentConfig | None = None) -> np.ndarray:
    """RGB uint8 photo -> ``(size, size, 3)`` float32 in [-1, 1]; augmented when ``rng`` is given."""
    return to_unit(make_input_uint8(image, size, rng, aug))


def to_unit(sample: np.ndarray) -> np.ndarray:
    """uint8 sample(s) -> float32 in [-1, 1]. Loader workers hand back uint8 (a quarter of the bytes
    to move between processes); this is the one conversion, bit for bit the same wherever it runs."""
    return sample.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def make_input_uint8(image: np.ndarray, size: int, rng: np.random.Generator | None = None,
                     aug: AugmentConfig | None = None) -> np.ndarray:
    """:func:`make_input` before the conversion to [-1, 1]: ``(size, size, 3)`` uint8."""
    return make_input_matrix(image, size, rng, aug)[0]


def make_input_matrix(image: np.ndarray, size: int, rng: np.random.Generator | None = None,
                      aug: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_input_uint8` and the 3x3 matrix that took the photo's pixels to the sample's (what
    hand-drawn boxes follow: :func:`blazeport.distill.labels.transport`)."""
    h, w = image.shape[:2]
    matrix, _ = roi_transform(w, h, size)  # MediaPipe's letterbox, a pure scale + shift
    if rng is not None:
        matrix = random_affine(rng, aug or AugmentConfig(), size) @ matrix
    out = cv2.warpAffine(image, matrix[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if rng is not None:
        out = photometric(out, rng, aug or AugmentConfig())
    return out, np.asarray(matrix, dtype=np.float64)


class DistillDataset:
    """Index -> (size, size, 3) float32 sample; call :meth:`set_epoch` before each epoch."""

    def __init__(self, images: ImageSet, indices: list[int], size: int, seed: int, augment: bool,
                 aug: AugmentConfig | None = None):
        self.images, self.indices, self.size, self.seed, self.augment = images, indices, size, seed, augment
        self.aug = aug or AugmentConfig()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        idx = self.indices[i]
        rng = sample_rng(self.seed, self.epoch, idx) if self.augment else None
        return make_input(self.images.images[idx], self.size, rng, self.aug)

    def batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """Samples ``indices`` as a ``(B, 3, S, S)`` tensor on ``device``: the stacked NHWC samples
        viewed as NCHW (channels-last memory, no copy before the move)."""
        return torch.from_numpy(np.stack([self[i] for i in indices])).permute(0, 3, 1, 2).to(device)

    def order(self, rank: int = 0, world: int = 1) -> list[int]:
        """This epoch's shuffled sample order, this rank's share (same on every rank)."""
        perm = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(len(self))
        if self.augment:
            return perm[rank::world].tolist()
        return list(range(len(self)))[rank::world]
