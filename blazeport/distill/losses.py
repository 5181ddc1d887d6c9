"""Distillation losses, as named terms that combine with weights.

``--loss`` takes a ``+``-joined list of terms with optional weights, e.g. ``recipe``,
``hinton+box``, ``recipe+mgd=0.5``. The terms:

- ``kl``: the write-up's class term: logits clamped to +-100, softmax over *anchors* at
  temperature T for teacher and student, ``KL(teacher || student) * T^2``.
- ``score``: BCE between student and teacher sigmoid scores per anchor (``score_l1`` for L1).
- ``box``: L1 (or MSE) between student and teacher boxes and keypoints *decoded with the
  anchors*, in input pixels, weighted per anchor by the teacher's score so background anchors'
  meaningless regressions do not dominate. Comparing raw regressors worked poorly in the
  write-up.
- ``recipe``: ``alpha * kl + (1 - alpha) * score + box`` (alpha 0.6), the write-up's mix.
- ``hinton``: per-anchor Hinton KD on the sigmoid: BCE(sigmoid(z_s / T), sigmoid(z_t / T)) * T^2.
- ``mgd``: Masked Generative Distillation (Yang et al., ECCV 2022) on one feature level: mask
  ~65% of the (channel-aligned) student map, regenerate the teacher's with two 3x3 convs,
  summed squared error / batch, times ``mgd_alpha``.
- ``hard``: SSD-style loss on the teacher's post-NMS detections as hard pseudo-labels: anchors
  matched by IoU of their SSD-sized boxes (best anchor per face plus IoU >= 0.5), BCE on logits
  with 3:1 hard-negative mining, L1 on decoded coordinates of positives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.postprocess import decode_boxes, nms

TERMS = ("kl", "score", "score_l1", "box", "hinton", "mgd", "hard")


@dataclass
class LossConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"kl": 0.6, "score": 0.4, "box": 1.0})
    temperature: float = 2.0
    box_metric: str = "l1"  # or "mse"
    mgd_ratio: float = 0.65
    mgd_alpha: float = 2e-5
    mgd_level: int = -1  # which head level's feature map
    hard_threshold: float = 0.5
    hard_iou: float = 0.5

    @classmethod
    def parse(cls, text: str, **kwargs: float) -> LossConfig:
        """``recipe``, ``hinton+box``, ``kl=0.6+score=0.4+box=1+mgd=0.5`` -> LossConfig."""
        alpha = float(kwargs.pop("alpha", 0.6))
        terms: dict[str, float] = {}
        for part in filter(None, re.split(r"[+,]", text.replace(" ", ""))):
            name, _, weight = part.partition("=")
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                w = math.nan
            if not (math.isfinite(w) and w >= 0):  # a NaN or negative weight would train on nonsense or diverge
                raise BlazeportError(f"loss term {part!r} in {text!r}: the weight must be a finite number >= 0")
            if name == "recipe":
                for k, v in {"kl": alpha, "score": 1 - alpha, "box": 1.0}.items():
                    terms[k] = terms.get(k, 0.0) + v * w
            elif name in TERMS:
                terms[name] = terms.get(name, 0.0) + w
            else:
                raise BlazeportError(f"unknown loss term {name!r} in {text!r}; terms: recipe, {', '.join(TERMS)}")
        if not any(terms.values()):
            raise BlazeportError(f"--loss {text!r} names no loss term with a weight above 0")
        return cls(terms=terms, **kwargs)

    def describe(self) -> str:
        return "+".join(f"{k}={v:g}" for k, v in self.terms.items())


def ssd_anchor_boxes(anchors: np.ndarray, opts: object) -> np.ndarray:
    """xyxy boxes of the anchors at their SSD scale (used only to match pseudo-labels).

    The face models use ``fixed_anchor_size`` (w = h = 1 in the table), which says nothing about
    which anchor should own a face; the SSD scales of the same options do.
    """
    import dataclasses

    from blazeport.anchors import generate_anchors

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


class DistillLoss(nn.Module):
    """Computes the configured terms; owns the trainable MGD aligner and generator."""

    def __init__(self, cfg: LossConfig, anchors: np.ndarray, spec: object,
                 student_channels: list[int] | None = None, teacher_channels: list[int] | None = None):
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

    def _decoded(self, raw: torch.Tensor) -> torch.Tensor:
        boxes, kps = decode_boxes(raw, self.anchors, self.size)
        return torch.cat([boxes, kps.flatten(-2)], -1) * self.size  # (B, N, 16) input pixels

    def forward(self, student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                s_feats: list[torch.Tensor] | None = None,
                t_feats: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg, T = self.cfg, self.cfg.temperature
        (s_reg, s_cls), (t_reg, t_cls) = student, teacher
        zs = s_cls[..., 0].float().clamp(-self.clip, self.clip)  # (B, N)
        zt = t_cls[..., 0].float().clamp(-self.clip, self.clip)
        pt = torch.sigmoid(zt)
        out: dict[str, torch.Tensor] = {}
        if "kl" in cfg.terms:
            out["kl"] = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True,
                                 reduction="batchmean") * T * T
        if "score" in cfg.terms:
            out["score"] = F.binary_cross_entropy_with_logits(zs, pt)
        if "score_l1" in cfg.terms:
            out["score_l1"] = (torch.sigmoid(zs) - pt).abs().mean()
        if "hinton" in cfg.terms:
            out["hinton"] = F.binary_cross_entropy_with_logits(zs / T, torch.sigmoid(zt / T)) * T * T
        if "box" in cfg.terms:
            diff = self._decoded(s_reg.float()) - self._decoded(t_reg.float())
            per_anchor = diff.abs().mean(-1) if cfg.box_metric == "l1" else diff.pow(2).mean(-1)
            out["box"] = (per_anchor * pt).sum() / pt.sum().clamp(min=1.0)
        if "mgd" in cfg.terms:
            fs, ft = self.align(s_feats[cfg.mgd_level].float()), t_feats[cfg.mgd_level].float()
            keep = (torch.rand(fs.shape[0], 1, *fs.shape[2:], device=fs.device) >= cfg.mgd_ratio).to(fs.dtype)
            out["mgd"] = (self.generator(fs * keep) - ft).pow(2).sum() / fs.shape[0] * cfg.mgd_alpha
        if "hard" in cfg.terms:
            out["hard"] = self._hard(s_reg.float(), zs, t_reg.float(), pt)
        total = sum(cfg.terms[k] * v for k, v in out.items())
        out["total"] = total
        return out

    @torch.no_grad()
    def _pseudo_labels(self, t_reg: torch.Tensor, pt: torch.Tensor) -> list[torch.Tensor]:
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

    def _hard(self, s_reg: torch.Tensor, zs: torch.Tensor, t_reg: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
        labels = self._pseudo_labels(t_reg, pt)
        decoded = self._decoded(s_reg)
        cls_losses, box_losses = [], []
        for b, gt in enumerate(labels):
            target = torch.zeros_like(zs[b])
            if len(gt):
                iou = _iou_matrix(self.anchor_boxes, gt[:, :4])  # (N, M)
                best_iou, owner = iou.max(1)
                positive = best_iou >= self.cfg.hard_iou
                positive[iou.argmax(0)] = True  # every face gets its best anchor
                owner[iou.argmax(0)] = torch.arange(len(gt), device=gt.device)
                target[positive] = 1.0
                box_losses.append((decoded[b, positive] - gt[owner[positive]] * self.size).abs().mean())
            n_pos = int(target.sum())
            per = F.binary_cross_entropy_with_logits(zs[b], target, reduction="none")
            neg = per.masked_fill(target > 0, -1.0)
            n_neg = min(max(3 * n_pos, 8), int((target == 0).sum()))
            hard_neg = neg.topk(n_neg).values
            cls_losses.append((per[target > 0].sum() + hard_neg.sum()) / max(n_pos + n_neg, 1))
        box = torch.stack(box_losses).mean() if box_losses else zs.sum() * 0
        return torch.stack(cls_losses).mean() + box
