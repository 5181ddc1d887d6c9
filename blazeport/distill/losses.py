"""The distillation loss: each ``--loss`` term of :mod:`blazeport.distill.loss_terms`, in torch.

:class:`DistillLoss` computes the terms a :class:`LossConfig` names, each by the function
registered under its name with :func:`_term` (a name missing from the table, or a table entry
without a function, stops the import), and their weighted total. The terms:

- ``kl``: the write-up's class term: logits clamped to +-100, softmax over *anchors* at
  temperature T for teacher and student, ``KL(teacher || student) * T^2``.
- ``score``: BCE between student and teacher sigmoid scores per anchor (``score_l1`` for L1).
- ``box``: L1 (or MSE) between student and teacher boxes and keypoints *decoded with the
  anchors*, in input pixels, weighted per anchor by the teacher's score so background anchors'
  meaningless regressions do not dominate. Comparing raw regressors worked poorly in the
  write-up.
- ``recipe``: ``alpha * kl + (1 - alpha) * score + box`` (alpha 0.6), the write-up's mix
  (expanded into those three terms when ``--loss`` is parsed).
- ``hinton``: per-anchor Hinton KD on the sigmoid: BCE(sigmoid(z_s / T), sigmoid(z_t / T)) * T^2.
- ``mgd``: Masked Generative Distillation (Yang et al., ECCV 2022) on one feature level: mask
  ~65% of the (channel-aligned) student map, regenerate the teacher's with two 3x3 convs,
  summed squared error / batch, times ``mgd_alpha``.
- ``hard``: SSD-style loss on the teacher's post-NMS detections as hard pseudo-labels: anchors
  matched by IoU of their SSD-sized boxes (best anchor per face plus IoU >= 0.5), BCE on logits
  with 3:1 hard-negative mining, L1 on decoded coordinates of positives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blazeport.anchors import generate_anchors
from blazeport.distill.loss_terms import ELEMENTARY, LossConfig
from blazeport.errors import BlazeportError
from blazeport.postprocess import decode_boxes, nms

__all__ = ["DistillLoss", "LossConfig", "ssd_anchor_boxes"]


def ssd_anchor_boxes(anchors: np.ndarray, opts: object) -> np.ndarray:
    """xyxy boxes of the anchors at their SSD scale (used only to match pseudo-labels).

    The face models use ``fixed_anchor_size`` (w = h = 1 in the table), which says nothing about
    which anchor should own a face; the SSD scales of the same options do.
    """
    sized = generate_anchors(dataclasses.replace(opts, fixed_anchor_size=False))
    xc, yc, w, h = sized.T
    assert np.allclose(sized[:, :2], anchors[:, :2])
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1).astype(np.float32)


def _iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


@dataclass
class Outputs:
    """One batch of student and teacher outputs, in the forms the terms share."""

    s_reg: torch.Tensor  # (B, N, 16) float32 raw regressors
    t_reg: torch.Tensor
    zs: torch.Tensor  # (B, N) float32 logits clamped to the spec's score clip
    zt: torch.Tensor
    pt: torch.Tensor  # (B, N) teacher sigmoid scores
    s_feats: list[torch.Tensor] | None  # the head's input maps (terms that need_features)
    t_feats: list[torch.Tensor] | None


TermFn = Callable[["DistillLoss", Outputs], torch.Tensor]
_IMPLEMENTATIONS: dict[str, TermFn] = {}


def _term(name: str) -> Callable[[TermFn], TermFn]:
    """Register ``fn`` as the implementation of the elementary term ``name`` of the table."""

    def register(fn: TermFn) -> TermFn:
        if name not in ELEMENTARY:
            raise ValueError(f"{name!r} is not an elementary loss term of blazeport.distill.loss_terms.TERMS")
        _IMPLEMENTATIONS[name] = fn
        return fn

    return register


class DistillLoss(nn.Module):
    """Computes the configured terms; owns the trainable MGD aligner and generator."""

    def __init__(self, cfg: LossConfig, anchors: np.ndarray, spec: object,
                 student_channels: list[int] | tuple[int, ...] | None = None,
                 teacher_channels: list[int] | tuple[int, ...] | None = None):
        super().__init__()
        self.cfg = cfg
        self.size = float(spec.input_size)
        self.clip = float(spec.score_clip)
        self.nms_threshold = float(spec.nms.min_suppression_threshold)
        self.register_buffer("anchors", torch.from_numpy(anchors.astype(np.float32)), persistent=False)
        if "hard" in cfg.terms:
            self.register_buffer("anchor_boxes", torch.from_numpy(ssd_anchor_boxes(anchors, spec.anchors)), persistent=False)
        if "mgd" in cfg.terms:
            if not student_channels or not teacher_channels:
                raise BlazeportError("the mgd loss needs feature maps from both teacher and student (BlazeFace-family teacher)")
            cs, ct = student_channels[cfg.mgd_level], teacher_channels[cfg.mgd_level]
            self.align = nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity()
            self.generator = nn.Sequential(
                nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 3, padding=1)
            )

    def decoded(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw regressors -> boxes and keypoints decoded with the anchors, (B, N, 16) in input pixels."""
        boxes, kps = decode_boxes(raw, self.anchors, self.size)
        return torch.cat([boxes, kps.flatten(-2)], -1) * self.size

    def forward(self, student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                s_feats: list[torch.Tensor] | None = None,
                t_feats: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Each configured term by name (in the table's order), and their weighted ``total``."""
        (s_reg, s_cls), (t_reg, t_cls) = student, teacher
        zt = t_cls[..., 0].float().clamp(-self.clip, self.clip)
        o = Outputs(s_reg=s_reg.float(), t_reg=t_reg.float(), zs=s_cls[..., 0].float().clamp(-self.clip, self.clip),
                    zt=zt, pt=torch.sigmoid(zt), s_feats=s_feats, t_feats=t_feats)
        out = {name: _IMPLEMENTATIONS[name](self, o) for name in ELEMENTARY if name in self.cfg.terms}
        out["total"] = sum(self.cfg.terms[k] * v for k, v in out.items())
        return out

    @torch.no_grad()
    def pseudo_labels(self, t_reg: torch.Tensor, pt: torch.Tensor) -> list[torch.Tensor]:
        """Teacher detections after threshold + weighted NMS, as (M, 16) normalized targets."""
        boxes, kps = decode_boxes(t_reg, self.anchors, self.size)
        labels = []
        for b in range(t_reg.shape[0]):
            keep = (pt[b] >= self.cfg.hard_threshold).nonzero()[:, 0]
            bx, kp, _ = nms(boxes[b, keep].cpu().numpy(), kps[b, keep].cpu().numpy(), pt[b, keep].cpu().numpy(),
                            self.nms_threshold)
            flat_kp = kp.reshape(kp.shape[0], kp.shape[1] * kp.shape[2])  # (M, 12), M may be 0
            labels.append(torch.from_numpy(np.concatenate([bx, flat_kp], 1)).to(t_reg.device))
        return labels


@_term("kl")
def _kl(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    T = loss.cfg.temperature
    return F.kl_div(F.log_softmax(o.zs / T, -1), F.log_softmax(o.zt / T, -1), log_target=True,
                    reduction="batchmean") * T * T


@_term("score")
def _score(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(o.zs, o.pt)


@_term("score_faces")
def _score_faces(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    # A plain mean over anchors gives a borderline face (teacher 0.5-0.8, where students disagree
    # most) about 1/900 of an image's weight; weighting by either model's score puts it on the faces
    # the teacher keeps and on the student's false ones.
    weight = 1.0 + 20.0 * torch.maximum(o.pt, torch.sigmoid(o.zs).detach())
    bce = F.binary_cross_entropy_with_logits(o.zs, o.pt, reduction="none")
    return (bce * weight).sum() / weight.sum()


@_term("score_l1")
def _score_l1(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    return (torch.sigmoid(o.zs) - o.pt).abs().mean()


@_term("hinton")
def _hinton(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    T = loss.cfg.temperature
    return F.binary_cross_entropy_with_logits(o.zs / T, torch.sigmoid(o.zt / T)) * T * T


@_term("box")
def _box(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    diff = loss.decoded(o.s_reg) - loss.decoded(o.t_reg)
    per_anchor = diff.abs().mean(-1) if loss.cfg.box_metric == "l1" else diff.pow(2).mean(-1)
    return (per_anchor * o.pt).sum() / o.pt.sum().clamp(min=1.0)


@_term("mgd")
def _mgd(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    cfg = loss.cfg
    fs, ft = loss.align(o.s_feats[cfg.mgd_level].float()), o.t_feats[cfg.mgd_level].float()
    keep = (torch.rand(fs.shape[0], 1, *fs.shape[2:], device=fs.device) >= cfg.mgd_ratio).to(fs.dtype)
    return (loss.generator(fs * keep) - ft).pow(2).sum() / fs.shape[0] * cfg.mgd_alpha


@_term("hard")
def _hard(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    labels = loss.pseudo_labels(o.t_reg, o.pt)
    decoded = loss.decoded(o.s_reg)
    cls_losses, box_losses = [], []
    for b, gt in enumerate(labels):
        target = torch.zeros_like(o.zs[b])
        if len(gt):
            iou = _iou_matrix(loss.anchor_boxes, gt[:, :4])  # (N, M)
            best_iou, owner = iou.max(1)
            positive = best_iou >= loss.cfg.hard_iou
            positive[iou.argmax(0)] = True  # every face gets its best anchor
            owner[iou.argmax(0)] = torch.arange(len(gt), device=gt.device)
            target[positive] = 1.0
            box_losses.append((decoded[b, positive] - gt[owner[positive]] * loss.size).abs().mean())
        n_pos = int(target.sum())
        per = F.binary_cross_entropy_with_logits(o.zs[b], target, reduction="none")
        neg = per.masked_fill(target > 0, -1.0)
        n_neg = min(max(3 * n_pos, 8), int((target == 0).sum()))
        hard_neg = neg.topk(n_neg).values
        cls_losses.append((per[target > 0].sum() + hard_neg.sum()) / max(n_pos + n_neg, 1))
    box = torch.stack(box_losses).mean() if box_losses else o.zs.sum() * 0
    return torch.stack(cls_losses).mean() + box


if set(_IMPLEMENTATIONS) != set(ELEMENTARY):  # the table and the implementations must name the same terms
    raise ImportError(f"loss terms without an implementation: {sorted(set(ELEMENTARY) - set(_IMPLEMENTATIONS))}")
