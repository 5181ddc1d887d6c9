"""The ``mosaic`` augmentation: some samples of a batch replaced by a 2x2 mosaic of four of its samples
at half size.

Why on the batch: a mosaic needs four photos, and a WebDataset stream cannot fetch three more by
index; the batch has them already, for folders and shards alike. It runs before the teacher labels
the batch, so the teacher labels the mosaic itself. Holding out WIDER FACE showed the need: without
its crowds the student never saw faces under ~15% of the input and found a third of WIDER's faces
(README, "Distillation"); a mosaic of portraits is a photo of small faces.

Deterministic: the draws come from a generator seeded by (seed, global step, rank), so a resumed
run repeats them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mosaic_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


def mosaic_batch(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` (B, C, S, S) with each sample, with probability ``p``, replaced by a 2x2 mosaic of four
    samples of ``x`` (drawn with replacement) shrunk to S/2 (area averaging). ``x`` is not modified."""
    return mosaic_with_plan(x, p, generator)[0]


def mosaic_with_plan(x: torch.Tensor, p: float, generator: torch.Generator) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """:func:`mosaic_batch` (the same draws), and which slots became mosaics of which four samples, in the
    order top-left, top-right, bottom-left, bottom-right (what hand-drawn boxes follow: :func:`tile_boxes`)."""
    if p <= 0 or len(x) == 0:
        return x, {}
    b, _, size, _ = x.shape
    chosen = (torch.rand(b, generator=generator) < p).nonzero()[:, 0]
    if len(chosen) == 0:
        return x, {}
    half = size // 2
    picks = torch.randint(0, b, (len(chosen), 4), generator=generator)
    out = x.clone()
    for slot, four in zip(chosen.tolist(), picks, strict=True):
        tiles = F.interpolate(x[four.to(x.device)], size=(half, half), mode="area")  # (4, C, S/2, S/2)
        out[slot, :, :half, :half], out[slot, :, :half, half:2 * half] = tiles[0], tiles[1]
        out[slot, :, half:2 * half, :half], out[slot, :, half:2 * half, half:2 * half] = tiles[2], tiles[3]
    return out, {slot: four.tolist() for slot, four in zip(chosen.tolist(), picks, strict=True)}


def tile_boxes(boxes: list[torch.Tensor | None], four: list[int], size: int) -> torch.Tensor | None:
    """The faces of a mosaic of samples ``four``: each tile's ``(M, 16)`` pixel boxes at half size, moved to its
    quadrant; None unless every tile has labels (an unlabelled tile's faces would be taken for background)."""
    if any(boxes[i] is None for i in four):
        return None
    half = size // 2
    scale = half / size
    parts = []
    for q, i in enumerate(four):
        shift = torch.tensor([half * (q % 2), half * (q // 2)], dtype=torch.float32).repeat(8)
        parts.append(boxes[i] * scale + shift.to(boxes[i].device))
    return torch.cat(parts)
