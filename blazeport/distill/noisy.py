"""Noisy Student changes: the teacher labels the clean photo, the student learns from a changed one.

Xie et al., "Self-training with Noisy Student improves ImageNet classification" (CVPR 2020): the
teacher produces pseudo-labels on *clean* images and the student is trained on *noised* ones under
those labels, so the student learns what the teacher knows on photos where the teacher itself would
fail, and can end above it. ``--augment``'s older terms are all labelled by the teacher on the changed
photo (:mod:`blazeport.distill.augment`), so a student trained with them can at best inherit the
teacher's failures on dark, blurred or turned photos (DESIGN.md: the teacher keeps AP50 0.65 on
quarter-turned photos against its own clean-photo detections).

**Where it happens.** After the batch is assembled (and ``mosaic`` has made its mosaics) the teacher
runs on the clean batch as before; then :class:`NoisyStudent` changes each sample with the ``ns_*``
terms it drew and carries the teacher's outputs through the same change; the student and every loss
term see the changed batch and the carried targets. The draws come from a generator seeded by (seed,
global step, rank), like the mosaic's, so a resumed run (at an epoch's end or inside one) repeats them;
a term at probability 0 draws nothing, so adding one at 0 changes no sample.

**Photometric terms** (``ns_dark``, ``ns_noise``, ``ns_motion``, ``ns_focus``, ``ns_jpeg``, ``ns_cast``)
keep every face where it was: the teacher's per-anchor outputs on the clean photo are the targets as
they are.

**Geometric terms** (``ns_flip``, ``ns_turn``, ``ns_half``, ``ns_crop``, ``ns_tilt``) move faces. The
distillation targets are the teacher's raw outputs *per anchor*, and the recipe loss compares scores
per anchor (KL over anchors, BCE) and boxes and keypoints *decoded with the anchors*
(:mod:`blazeport.distill.losses`). So the targets are carried as a field over the anchors: student
anchor j, at centre c_j of the changed picture, takes the teacher's output at the anchor of the same
head level and the same slot of its cell nearest to the pre-image H^-1(c_j) (H: the change's
homography, :func:`blazeport.distill.changes.homography`): its logit as it is, and its decoded box
and keypoints mapped through H (the box as the bounding box of its mapped corners, keypoints in the
subject's order: swapped 0<->1 and 4<->5 after a mirror), re-encoded against anchor j. An anchor
whose pre-image lies outside the picture (black border brought in by a tilt) is background (logit
-clip). For flips and turns of the square letterboxed tensor this is exact: the anchor grid maps onto
itself (centres at (i + 0.5) / n of a square grid, one size for every anchor of the face models), every
pre-image is an anchor centre, and the carried field is exactly what an equivariant teacher would give
on the changed picture. For a crop and a tilt the boxes and keypoints are still mapped exactly; which
anchor carries them is the nearest one (within half a cell, 4 px at stride 8), and a face keeps its
head level though it grew by up to 1.6x. Every loss term then works unchanged, the ``hard`` term's
pseudo-labels included (decoded from the carried outputs). Matching decoded teacher detections to the
student's anchors instead (an SSD loss on the transformed post-NMS boxes) would throw away the soft
scores that make the recipe work (docs/results/distillation.md: hard pseudo-labels 0.74 AP50 against
the recipe's 0.83), so it is not used. The ``mgd`` term compares feature maps, which no such carry
exists for: it is refused beside a geometric term.

Hand-drawn boxes (``--boxes``, :mod:`blazeport.distill.labels`) are carried through the same
homographies (:meth:`Change.carry_boxes`).

**Cost**: the changes run in the training process, after the teacher (they must follow the mosaic,
which is made there), photometric ones with OpenCV on the CPU one sample at a time: about 70 ms for a
batch of 32 with eight ``ns_*`` terms at 0.2-0.3 on this 2-core host (one thread, under load), next
to a few hundred ms for the step itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from blazeport.distill.augment import AugmentConfig, noisy_terms
from blazeport.distill.changes import GEOMETRIC, MIRROR_KEYPOINTS, apply_photometric, draw_params, homography
from blazeport.pipeline.anchors import head_layout

__all__ = ["Change", "NoisyStudent", "noisy_generator"]


def noisy_generator(seed: int, step: int, rank: int) -> np.random.Generator:
    """The draws of one optimizer step (another stream than the mosaic's)."""
    return np.random.default_rng([seed, step, rank, 0x5E1F])


@dataclass
class Change:
    """What one sample of a batch went through: geometric changes (applied first, in order) and photometric ones."""

    geometric: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    photometric: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    noise_seed: int = 0

    def matrix(self, size: int) -> np.ndarray:
        """The composed homography (unchanged picture -> changed picture)."""
        m = np.eye(3)
        for name, p in self.geometric:
            m = homography(name, p, size) @ m
        return m

    @property
    def mirrored(self) -> bool:
        return sum(name == "flip" for name, _ in self.geometric) % 2 == 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """One ``(3, S, S)`` sample in [-1, 1] -> the changed sample (a new tensor)."""
        size = x.shape[-1]
        warp = np.eye(3)
        for name, p in self.geometric:
            if name == "flip":
                x = torch.flip(x, dims=[-1])
            elif name in ("turn", "half"):
                x = torch.rot90(x, int(p["k"]) if name == "turn" else 2, dims=(-2, -1))
            else:  # crop, tilt: composed, resampled once below
                warp = homography(name, p, size) @ warp
        if not np.allclose(warp, np.eye(3)):
            x = _warp(x, warp)
        if self.photometric:
            img = ((x.detach().permute(1, 2, 0).cpu().numpy() + 1.0) * 0.5).astype(np.float32)
            img = apply_photometric(img, self.photometric, np.random.default_rng(self.noise_seed))
            x = torch.from_numpy(img * 2.0 - 1.0).permute(2, 0, 1).to(x.device, x.dtype)
        return x.contiguous()

    def carry_boxes(self, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """``(M, 16)`` boxes in input pixels (xmin, ymin, xmax, ymax, 6 keypoints x, y) -> the same faces in the
        changed picture (keypoints in the subject's order)."""
        if not self.geometric or len(boxes) == 0:
            return boxes
        h = torch.as_tensor(self.matrix(size), dtype=torch.float32, device=boxes.device)
        return _map_boxes(boxes.float(), h, self.mirrored)


def _apply_h(h: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(…, 2) points through the 3x3 ``h``."""
    ones = torch.ones_like(pts[..., :1])
    p = torch.cat([pts, ones], -1) @ h.T
    return p[..., :2] / p[..., 2:3]


def _map_boxes(boxes: torch.Tensor, h: torch.Tensor, mirrored: bool) -> torch.Tensor:
    """xyxy + 6 keypoints (pixels) through ``h``: the box as the bounding box of its four mapped corners."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], 1)  # (M, 4, 2)
    mapped = _apply_h(h, corners)
    kps = _apply_h(h, boxes[:, 4:].reshape(len(boxes), -1, 2))
    if mirrored and kps.shape[1] == len(MIRROR_KEYPOINTS):
        kps = kps[:, list(MIRROR_KEYPOINTS)]
    return torch.cat([mapped.min(1).values, mapped.max(1).values, kps.flatten(1)], 1)


def _warp(x: torch.Tensor, h: np.ndarray) -> torch.Tensor:
    """Resample ``x`` (3, S, S) so that the point p of the input lands at ``h`` p; black outside."""
    size = x.shape[-1]
    centres = (torch.arange(size, dtype=torch.float64) + 0.5)
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    out_pts = torch.stack([xx, yy], -1).reshape(-1, 2)
    src = _apply_h(torch.as_tensor(np.linalg.inv(h)), out_pts).reshape(size, size, 2)
    grid = (src / size * 2.0 - 1.0).to(torch.float32)[None]  # align_corners=False: -1 / +1 are the outer edges
    out = F.grid_sample((x[None].float() + 1.0), grid.to(x.device), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return (out[0] - 1.0).to(x.dtype)  # sampled with the black (-1) border as 0, shifted back


class NoisyStudent:
    """Draws each batch's changes (:func:`noisy_generator`), applies them to the student's input and carries
    the teacher's outputs through them (see the module docstring)."""

    def __init__(self, aug: AugmentConfig, anchors: np.ndarray, anchor_opts: object, size: int, clip: float):
        self.probs = noisy_terms(aug)  # {"dark": p, ...} for the ns_ terms above 0, in table order
        self.size, self.clip = size, float(clip)
        self.anchors = torch.from_numpy(anchors.astype(np.float32))
        self.layout = head_layout(anchor_opts)  # (stride, anchors per cell) per head level, in anchor order
        self.offset = float(anchor_opts.anchor_offset)

    @property
    def active(self) -> bool:
        return bool(self.probs)

    @property
    def geometric(self) -> bool:
        return any(name in GEOMETRIC for name in self.probs)

    def draw(self, n: int, rng: np.random.Generator) -> list[Change]:
        """Each of ``n`` samples' changes; a term at probability 0 is not in ``probs`` and draws nothing."""
        changes = []
        for _ in range(n):
            c = Change()
            for name, p in self.probs.items():
                if rng.random() < p:
                    (c.geometric if name in GEOMETRIC else c.photometric).append((name, draw_params(name, rng)))
            if c.photometric:
                c.noise_seed = int(rng.integers(2**31))
            changes.append(c)
        return changes

    def student_batch(self, x: torch.Tensor, teacher_out: tuple[torch.Tensor, torch.Tensor], seed: int, step: int,
                      rank: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], list[Change]]:
        """The trainer's one call: this step's changes drawn, the student's batch, the carried targets."""
        changes = self.draw(len(x), noisy_generator(seed, step, rank))
        return self.apply(x, changes), self.carry(*teacher_out, changes), changes

    def apply(self, x: torch.Tensor, changes: list[Change]) -> torch.Tensor:
        """The student's batch: each sample of ``x`` (B, 3, S, S) changed (``x`` itself is kept)."""
        if not any(c.geometric or c.photometric for c in changes):
            return x
        return torch.stack([c.apply(x[b]) if (c.geometric or c.photometric) else x[b] for b, c in enumerate(changes)])

    @torch.no_grad()
    def carry(self, t_reg: torch.Tensor, t_cls: torch.Tensor,
              changes: list[Change]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's outputs on the clean batch -> targets for the changed batch (only samples with a
        geometric change differ)."""
        if not any(c.geometric for c in changes):
            return t_reg, t_cls
        reg, cls = t_reg.float().clone(), t_cls.float().clone()
        for b, c in enumerate(changes):
            if c.geometric:
                reg[b], cls[b] = self._carry_one(reg[b], cls[b], c)
        return reg, cls

    def source_anchors(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each anchor j: the anchor of its head level and cell slot nearest to the pre-image of its centre
        under ``h``, and whether that pre-image lies in the picture."""
        s = self.size
        centres = self.anchors[:, :2].double().numpy() * s
        pre = _apply_h(torch.as_tensor(np.linalg.inv(h)), torch.from_numpy(centres)).numpy()
        src = np.zeros(len(centres), np.int64)
        inside = (pre[:, 0] >= 0) & (pre[:, 0] <= s) & (pre[:, 1] >= 0) & (pre[:, 1] <= s)
        start = 0
        for stride, per_cell in self.layout:
            fm = -(-s // stride)
            n = fm * fm * per_cell
            j = np.arange(start, start + n)
            slot = (j - start) % per_cell
            col = np.clip(np.floor(pre[j, 0] / s * fm - self.offset + 0.5), 0, fm - 1).astype(np.int64)
            row = np.clip(np.floor(pre[j, 1] / s * fm - self.offset + 0.5), 0, fm - 1).astype(np.int64)
            src[j] = start + (row * fm + col) * per_cell + slot
            start += n
        return src, inside

    def _carry_one(self, reg: torch.Tensor, cls: torch.Tensor, change: Change) -> tuple[torch.Tensor, torch.Tensor]:
        s, a = float(self.size), self.anchors.to(reg.device)
        h = change.matrix(self.size)
        src, inside = self.source_anchors(h)
        # the teacher's per-anchor predictions, decoded in input pixels (as losses.DistillLoss.decoded does)
        xc, yc = reg[:, 0] / s * a[:, 2] + a[:, 0], reg[:, 1] / s * a[:, 3] + a[:, 1]
        w, hh = reg[:, 2] / s * a[:, 2], reg[:, 3] / s * a[:, 3]
        kx = reg[:, 4::2] / s * a[:, 2:3] + a[:, 0:1]
        ky = reg[:, 5::2] / s * a[:, 3:4] + a[:, 1:2]
        boxes = torch.cat([torch.stack([xc - w / 2, yc - hh / 2, xc + w / 2, yc + hh / 2], -1),
                           torch.stack([kx, ky], -1).flatten(1)], 1) * s
        moved = _map_boxes(boxes, torch.as_tensor(h, dtype=torch.float32, device=reg.device), change.mirrored)
        moved = moved[torch.from_numpy(src).to(reg.device)] / s  # now row j: the face anchor j should describe
        cx, cy = (moved[:, 0] + moved[:, 2]) / 2, (moved[:, 1] + moved[:, 3]) / 2
        out = torch.empty_like(reg)
        out[:, 0], out[:, 1] = (cx - a[:, 0]) * s / a[:, 2], (cy - a[:, 1]) * s / a[:, 3]
        out[:, 2], out[:, 3] = (moved[:, 2] - moved[:, 0]) * s / a[:, 2], (moved[:, 3] - moved[:, 1]) * s / a[:, 3]
        out[:, 4::2] = (moved[:, 4::2] - a[:, 0:1]) * s / a[:, 2:3]
        out[:, 5::2] = (moved[:, 5::2] - a[:, 1:2]) * s / a[:, 3:4]
        logits = cls[torch.from_numpy(src).to(cls.device)].clone()
        outside = torch.from_numpy(~inside).to(cls.device)
        logits[outside] = -self.clip
        out[outside] = 0.0
        return out, logits


